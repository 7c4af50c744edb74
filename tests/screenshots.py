"""Save a screenshot of every screen of the app into a folder.

    xvfb-run -a -s "-screen 0 1400x900x24" python -m tests.screenshots shots/ [--theme light|dark]

It runs the real app on the SmolLM2 test model (fetched as the tests do) in a
scratch library, settings folder and conversation database, streams a real reply,
runs the quantize wizard's estimate on a full-precision copy, and grabs each
window. Nothing of the user's own settings or library is touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def _wait(app, until: Callable[[], bool], timeout_s: float = 120.0) -> None:
    import time

    t0 = time.monotonic()
    while not until():
        app.processEvents()
        time.sleep(0.02)
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError("the app did not get there in time")


def _settle(app, seconds: float = 0.6) -> None:
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        app.processEvents()
        time.sleep(0.02)


def _show_hub_results(page) -> None:
    """Search results and a model's details as the Hub would return them (illustrative
    repositories; no network is used)."""
    from lowbit.core.hub import HubFile, HubModel

    def gguf(repo: str, quant: str, size_mib: float) -> HubFile:
        name = f"{repo.split('/')[1].removesuffix('-GGUF')}-{quant}.gguf"
        return HubFile(name, int(size_mib * 2**20), kind="gguf", quant_type=quant)

    results = [
        HubModel("HuggingFaceTB/SmolLM2-135M-Instruct", architecture="llama", supported=True,
                 n_params=134_515_008, license="apache-2.0", downloads=412_000, likes=238),
        HubModel("HuggingFaceTB/SmolLM2-1.7B-Instruct", architecture="llama", supported=True,
                 n_params=1_711_376_384, license="apache-2.0", downloads=198_000, likes=690),
        HubModel("Qwen/Qwen2.5-0.5B-Instruct", architecture="qwen2", supported=True,
                 n_params=494_032_768, license="apache-2.0", downloads=1_250_000, likes=310),
        HubModel("Qwen/Qwen2.5-7B-Instruct-GGUF", architecture="qwen2", supported=True,
                 n_params=7_615_616_512, license="apache-2.0", downloads=96_000, likes=150, is_gguf=True),
        HubModel("meta-llama/Llama-3.2-1B-Instruct", architecture="llama", supported=True,
                 n_params=1_235_814_400, license="llama3.2", gated=True, downloads=2_100_000, likes=1100),
    ]  # fmt: skip
    page.show_results(results)
    repo = "Qwen/Qwen2.5-7B-Instruct-GGUF"
    files = (
        HubFile("README.md", 4_000, kind="other"),
        gguf(repo, "Q8_0", 7723),
        gguf(repo, "Q6_K", 5962),
        gguf(repo, "Q5_K_M", 5207),
        gguf(repo, "Q4_K_M", 4466),
        gguf(repo, "Q3_K_M", 3630),
        gguf(repo, "Q2_K", 2876),
    )
    config = {
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "max_position_embeddings": 32768, "tie_word_embeddings": False,
    }  # fmt: skip
    page.show_details(HubModel(**{**results[3].__dict__, "files": files}), config)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--theme", choices=("light", "dark"), default="light")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="lowbit-shots-"))
    os.environ["LOWBIT_LIBRARY"] = str(scratch / "library")
    os.environ.pop("LOWBIT_MODEL", None)

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from lowbit.app.main_window import MainWindow
    from lowbit.app.settings import AppSettings
    from lowbit.app.theme import apply_theme
    from lowbit.core.conversations import ConversationStore
    from lowbit.core.convert import gguf_to_hf
    from tests.conftest import fetch_smollm2

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("Lowbit")
    apply_theme(args.theme)
    settings = AppSettings(QSettings(str(scratch / "settings.ini"), QSettings.Format.IniFormat))
    settings.theme = args.theme
    settings.library_dir = scratch / "library"
    settings.n_ctx = 2048

    def shot(widget, name: str) -> None:
        _settle(app)
        path = args.out / f"{name}.png"
        widget.grab().save(str(path))
        print(path)

    # first run: empty library
    w = MainWindow(settings=settings, store=ConversationStore(scratch / "first.sqlite3"))
    w.resize(1280, 800)
    w.show()
    shot(w, "01-welcome")
    w.close()

    model = fetch_smollm2()
    hf_dir = scratch / "SmolLM2-135M-Instruct-hf"
    gguf_to_hf(model, hf_dir, dtype="bf16")
    w = MainWindow(settings=settings, store=ConversationStore(scratch / "chats.sqlite3"))
    w.resize(1280, 800)
    w.show()
    lib = w.ctx.library
    entry = lib.import_path(model, copy=True, name="SmolLM2-135M-Instruct")
    lib.import_path(hf_dir, name="SmolLM2-135M-Instruct (full precision)")
    w.ctx.library_changed.emit()
    w.open_in_chat(str(lib.path_of(entry)))
    chat = w.chat
    _wait(app, lambda: w.bridge.model_info is not None and not chat.busy)
    chat.temperature.setValue(0.0)
    chat.max_tokens.setValue(160)
    chat.input.setPlainText(
        "Write a Python function that checks whether a number is prime, and explain it briefly."
    )
    chat.send()
    _wait(app, lambda: not chat.busy)
    chat.input.setPlainText("What is the capital of France?")
    chat.send()
    _wait(app, lambda: chat.busy and chat._reply_text and len(chat._reply_text) > 3)
    shot(w, "02-chat-streaming")
    _wait(app, lambda: not chat.busy)
    shot(w, "03-chat")

    w.show_page("Models")
    shot(w, "04-models-library")
    _show_hub_results(w.models)
    shot(w, "05-models-hub")

    w.show_page("Quantize")
    shot(w, "06-quantize")
    wiz = w.quantize.open_wizard(str(hf_dir))
    wiz.resize(1000, 720)
    _wait(app, lambda: wiz.currentPage().isComplete())
    shot(wiz, "07-wizard-1-source")
    wiz.next()
    _wait(app, lambda: wiz.currentPage().isComplete())
    wiz.currentPage().set_checked(["Q8_0", "Q4_K_M", "Q4_0", "Q3_K_M"])
    shot(wiz, "07-wizard-2-levels")
    wiz.next()
    shot(wiz, "07-wizard-3-calibration")
    wiz.next()
    _settle(app, 8.0)  # into the run
    shot(wiz, "07-wizard-4-run")
    _wait(app, lambda: wiz.currentPage().isComplete(), 900)
    wiz.next()
    shot(wiz, "07-wizard-5-report")
    wiz.next()
    _wait(app, lambda: wiz.currentPage().isComplete(), 120)
    shot(wiz, "07-wizard-6-finish")
    wiz.accept()
    shot(w, "06b-quantize-after")

    w.show_page("Settings")
    shot(w, "08-settings")

    from lowbit.app.compare import CompareDialog

    q4 = scratch / "library" / "SmolLM2-135M-Instruct.Q4_0.gguf"
    from lowbit.core.quantize import quantize_model

    quantize_model(hf_dir, q4, preset="Q4_0")
    lib.import_path(q4)
    dlg = CompareDialog(w.ctx, "Name three colours of the rainbow.", w)
    dlg.model_a.setCurrentIndex(dlg.model_a.findData(str(lib.path_of(entry))))
    dlg.model_b.setCurrentIndex(dlg.model_b.findData(str(q4)))
    dlg.max_tokens.setValue(60)
    dlg.show()
    dlg.run()
    _wait(app, lambda: dlg.result is not None)
    shot(dlg, "09-compare")
    dlg.close()

    w.ctx.error.emit(
        "The model could not be loaded. broken.gguf is not a GGUF file (it does not start with 'GGUF')."
    )
    w.show_page("Chat")
    shot(w, "10-error-banner")
    w.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
