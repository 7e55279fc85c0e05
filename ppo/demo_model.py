"""`python -m ppo.demo_model`: the documented command, kept; the code is `ppo.demo.model`."""

from ppo.demo.model import main

if __name__ == "__main__":
    main()
