"""Write the two files: OUT/model.safetensors and OUT/run.py.

What it owns: putting a self-contained parameters file and the standalone runner (`run.py` in
this package, which needs only Python and numpy) side by side in one directory. A twofiles
model.safetensors is copied byte for byte; a model from anywhere else (a GGUF file or a Hugging
Face directory, once `formats.resolve.resolve_model` reads them) is loaded and written with
`artifact.save_model` first. Both files are written atomically (temp file + rename). What it
leaves to others: reading other formats (formats), the runner itself (run.py).
"""

from __future__ import annotations

import os
import shutil
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twofiles.artifact import FORMAT, atomic_write_bytes, read_metadata, save_model
from twofiles.errors import BadInputError

if TYPE_CHECKING:
    from twofiles.artifact import LoadedModel

MODEL_NAME = "model.safetensors"
RUN_NAME = "run.py"


def run_py_source() -> str:
    """The text of the standalone runner, as shipped in this package."""
    return resources.files("twofiles.standalone").joinpath(RUN_NAME).read_text(encoding="utf-8")


def _is_twofiles_file(path: str) -> bool:
    if not (os.path.isfile(path) and path.endswith(".safetensors")):
        return False
    meta = read_metadata(path)  # raises a clear BadInputError for a broken file
    return meta.get("format") == FORMAT and "config" in meta and "tokenizer" in meta


def _atomic_copy(src: str, dst: Path) -> None:
    if dst.exists() and os.path.samefile(src, dst):
        return  # exporting into the model's own directory: the file is already there
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 16 * 2**20)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def export_run(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    loaded: LoadedModel | None = None,
) -> dict[str, Any]:
    """Write OUT/model.safetensors and OUT/run.py. `loaded` (a model already in memory, e.g. read
    from another format) is saved instead of copying `model_path`. Returns a summary: out, model,
    run_py, bytes (the two files together)."""
    model_path = str(model_path)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError("output exists and is not a directory", path=str(out))
    if loaded is None and not _is_twofiles_file(model_path):
        from twofiles.formats.resolve import resolve_model  # the one place other formats are read

        loaded = resolve_model(model_path, cap_context=False)  # a persona: its model, uncapped
    out.mkdir(parents=True, exist_ok=True)
    model_out, run_out = out / MODEL_NAME, out / RUN_NAME
    if loaded is not None:
        provenance = {**loaded.provenance, "exported_from": model_path}
        save_model(
            model_out,
            loaded.model,
            loaded.tokenizer,
            provenance=provenance,
            chat_template=loaded.chat_template,
        )
    else:
        _atomic_copy(model_path, model_out)
    atomic_write_bytes(run_out, run_py_source().encode("utf-8"))
    run_out.chmod(0o755)
    return {
        "out": str(out),
        "model": str(model_out),
        "run_py": str(run_out),
        "bytes": model_out.stat().st_size + run_out.stat().st_size,
    }


__all__ = ["MODEL_NAME", "RUN_NAME", "export_run", "run_py_source"]
