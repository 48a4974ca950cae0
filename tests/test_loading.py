"""Model loading: registry names, local directories, and every way a model can be missing fails fast with the fix."""

from __future__ import annotations

import json
import time

import pytest

import groundscope as gs
from groundscope.models.loading import ModelLoadError, resolve
from groundscope.models.registry import REGISTRY

REQUIRED = ["gdino-tiny", "gdino-base", "mm-gdino-tiny", "mm-gdino-base", "mm-gdino-large", "llmdet-tiny",
            "llmdet-base", "llmdet-large"]


def test_registry_names_resolve_to_hub_ids():
    for name in REQUIRED:
        source, display = resolve(name)
        assert source == REGISTRY[name].source and "/" in source and display == name
    assert resolve("some-org/some-model") == ("some-org/some-model", "some-org/some-model")


def test_local_directory_loads_through_the_same_path(tiny_model_dir):
    det = gs.load_detector(tiny_model_dir)
    assert det.name == str(tiny_model_dir) and det.max_text_len == 256
    assert type(det.model).__name__ in ("GroundingDinoForObjectDetection", "MMGroundingDinoForObjectDetection")


def test_unknown_name_lists_the_choices():
    with pytest.raises(ModelLoadError, match="'no-such-model'.*llmdet-tiny.*--model"):
        gs.load_detector("no-such-model")


def test_offline_and_not_cached_fails_in_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="'llmdet-tiny'.*not in the local cache.*HF_HUB_OFFLINE.*--model"):
        gs.load_detector("llmdet-tiny")
    assert time.monotonic() - t < 10


def test_unreachable_hub_fails_in_seconds(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    t = time.monotonic()
    with pytest.raises(ModelLoadError, match="hub cannot be reached.*--model"):
        gs.load_detector("nobody-here/not-a-model")
    assert time.monotonic() - t < 10


def test_broken_directories(tmp_path, tiny_mm_dir):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        gs.load_detector(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="'bert' model"):
        gs.load_detector(bad)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_mm_dir / "config.json").read_text())
    with pytest.raises(ModelLoadError, match="weights"):
        gs.load_detector(no_weights)
    with pytest.raises(ModelLoadError, match="is a file"):
        gs.load_detector(tiny_mm_dir / "config.json")


def test_resize_edges_come_from_the_preprocessor_config(tmp_path, tiny_mm_dir, example_photo):
    import shutil

    small = tmp_path / "small"
    shutil.copytree(tiny_mm_dir, small)
    (small / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 320, "longest_edge": 512}}))
    det = gs.load_detector(small)
    assert det.image_size == (320, 512)
    assert tuple(det.prepare([example_photo])[0].pixel_values.shape[1:]) == (320, 481)  # chelsea is 451x300 (w x h)
    assert gs.load_detector(tiny_mm_dir).image_size == (800, 1333)


@pytest.mark.parametrize("pickle_name", ["pytorch_model.bin", "llm/weights.pt"])
def test_a_model_folder_with_a_pickle_file_is_refused_with_the_reason(tmp_path, pickle_name):
    import torch

    import groundscope as gs

    folder = tmp_path / "suspicious"
    (folder / pickle_name).parent.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    torch.save({"w": torch.zeros(1)}, folder / pickle_name)
    with pytest.raises(ModelLoadError, match=f"holds {pickle_name}: pickle files can run code.*safetensors"):
        gs.load_detector(str(folder))
    with pytest.raises(ModelLoadError, match="pickle files"):
        gs.load_segmenter(str(folder))
