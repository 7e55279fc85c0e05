"""Hydra launcher plugins of ppo-mlx. Hydra finds a plugin only in the hydra_plugins namespace
package (hydra.core.plugins), so the class lives here and its work in ppo.tools.joblib_sweep."""
