"""push_to_hub: the offline checks (repo id, offline mode, complete export) and the two huggingface_hub calls.

No network: the API is replaced by a recorder, and HF_HUB_OFFLINE stays set except where a test lifts it.
"""

from __future__ import annotations

import shutil

import pytest

from kp_lightning import hub_push
from kp_lightning.core.export import export_compact
from kp_lightning.errors import ConfigError, MissingFileError
from kp_lightning.hub_push import check_export_dir, check_push_target, check_repo_id, push_to_hub
from tests.helpers import tiny_model


class RecordingApi:
    """Stands in for ``HfApi``: records the calls, touches no network."""

    calls: list = []

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs))


@pytest.fixture
def api(monkeypatch):
    RecordingApi.calls = []
    monkeypatch.setattr(hub_push, "HfApi", RecordingApi)
    return RecordingApi


@pytest.fixture
def online(monkeypatch):
    """Lift offline mode for huggingface_hub (the env vars and the value it read at import)."""
    for name in hub_push.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_push.constants, "HF_HUB_OFFLINE", False)


@pytest.fixture
def export(tmp_path):
    out = tmp_path / "export"
    export_compact(tiny_model("bert", "ForSequenceClassification"), out, method="kprune")
    return out


def test_repo_ids_need_a_namespace_and_valid_characters():
    assert check_repo_id("my-org/bert-sst2.kprune_60") == "my-org/bert-sst2.kprune_60"
    bad_ids = ("bert-sst2", "a/b/c", "/name", "org/", "org/bad--name", "org/.hidden", "org/name.git", "org/sp ace", "")
    for bad in bad_ids:
        with pytest.raises(ConfigError) as info:
            check_repo_id(bad)
        assert repr(bad) in info.value.message and "namespace" in info.value.fix, bad


def test_offline_mode_is_refused_with_a_fix(api):
    # tests/conftest.py sets HF_HUB_OFFLINE=1
    with pytest.raises(ConfigError, match="offline mode") as info:
        check_push_target("org/name")
    assert "unset HF_HUB_OFFLINE" in info.value.fix
    with pytest.raises(ConfigError, match="namespace/name"):
        check_push_target("no-namespace")  # the repo id is checked first


def test_online_a_valid_target_passes(online):
    assert check_push_target("org/name") == "org/name"


def test_a_complete_export_passes_and_incomplete_ones_are_named(export, tmp_path):
    assert check_export_dir(export) == export
    with pytest.raises(MissingFileError, match="does not exist"):
        check_export_dir(tmp_path / "nowhere")

    def broken(name: str, change) -> object:
        copy = tmp_path / name
        shutil.copytree(export, copy)
        change(copy)
        return copy

    for removed in ("README.md", "compression_report.json", "config.json", "model.safetensors"):
        with pytest.raises(MissingFileError, match=removed.replace(".", r"\.")):
            check_export_dir(broken(f"no-{removed}", lambda d, f=removed: (d / f).unlink()))
    bare = broken("bare-card", lambda d: (d / "README.md").write_text("# just a title\n"))
    with pytest.raises(ConfigError, match="no YAML front matter"):
        check_export_dir(bare)
    bad_yaml = broken("bad-yaml", lambda d: (d / "README.md").write_text("---\ntags: [a\n---\n\nbody\n"))
    with pytest.raises(ConfigError, match="not a valid model card"):
        check_export_dir(bad_yaml)
    bad_report = broken("bad-report", lambda d: (d / "compression_report.json").write_text("[1, 2]"))
    with pytest.raises(ConfigError, match="JSON object"):
        check_export_dir(bad_report)


def test_int8_file_layout_counts_as_weights(export, tmp_path):
    int8 = tmp_path / "int8"
    shutil.copytree(export, int8)
    (int8 / "model.safetensors").unlink()
    (int8 / "model.onnx").write_bytes(b"onnx")
    with pytest.raises(MissingFileError, match="model.onnx"):
        check_export_dir(int8)  # model.onnx without quantization.json
    (int8 / "quantization.json").write_text("{}")
    assert check_export_dir(int8) == int8


def test_push_creates_the_repo_then_uploads_the_folder(export, api, online):
    url = push_to_hub(export, "org/bert-kprune", private=True, token="hf_x")
    assert url == "https://huggingface.co/org/bert-kprune"
    assert api.calls[0] == ("init", "hf_x")
    assert api.calls[1] == ("create_repo", "org/bert-kprune", {"private": True, "exist_ok": True, "repo_type": "model"})
    name, upload = api.calls[2]
    assert name == "upload_folder" and upload["repo_id"] == "org/bert-kprune"
    assert upload["folder_path"] == str(export) and "kprune" in upload["commit_message"]
    push_to_hub(export, "org/bert-kprune", commit_message="mine")
    assert api.calls[-1][1]["commit_message"] == "mine" and api.calls[-2][2]["private"] is False


def test_push_checks_everything_before_any_call(export, tmp_path, api):
    with pytest.raises(ConfigError, match="offline"):
        push_to_hub(export, "org/name")
    with pytest.raises(ConfigError, match="namespace"):
        push_to_hub(export, "name")
    assert api.calls == []


def test_an_incomplete_export_is_refused_before_any_call(tmp_path, api, online):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(MissingFileError, match="not a complete export"):
        push_to_hub(tmp_path, "org/name")
    assert api.calls == []
