"""The pretraining pool of protocol=continual_pretraining (spec fomo_in_flux.md section 4): a user's caption folder or
webdataset shards written here in their real formats, the limit, the no-pool fallback and its recorded deviation,
and one-line errors for a missing or corrupt pool."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from conftest import compose_config
from PIL import Image

from fluxbench.benchmarks.folder_cache import ResizeRule
from fluxbench.benchmarks.image_text import read_image_text
from fluxbench.cli import main
from fluxbench.errors import DataError
from fluxbench.protocols import continual_pretraining as cp
from fluxbench.protocols import with_protocol_defaults
from fluxbench.reports import build
from fluxbench.tracking import Tracker
from fluxbench.tracking.layout import DEVIATION_TAG, KIND_PROTOCOL, KIND_TAG, PRETRAINING_POOL_SIZE_TAG

RULE = ResizeRule(16, 1.0)
FAST = ("benchmark.num_tasks=2", "protocol.budget.steps_per_task=2", "protocol.batch_size=16")


def encoded(seed: int, fmt: str = "PNG", size: tuple[int, int] = (20, 12)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def write_folder(root: Path, n: int = 5) -> Path:
    """``n`` image-caption pairs, PNG and JPEG, some one folder down."""
    for i in range(n):
        sub = root / ("b" if i % 2 else "a")
        sub.mkdir(parents=True, exist_ok=True)
        ext, fmt = (".png", "PNG") if i % 3 else (".jpg", "JPEG")
        (sub / f"{i:03d}{ext}").write_bytes(encoded(i, fmt))
        (sub / f"{i:03d}.txt").write_text(f"a photo of the number {i}.\n")
    return root


class Trap:
    """Unpickling this sets a flag: a pickle decoder anywhere in the read would be caught."""

    fired = False

    def __reduce__(self):
        return (_fire, ())


def _fire() -> None:
    Trap.fired = True


def write_shard(path: Path, start: int, n: int) -> Path:
    """A webdataset shard written by webdataset's own TarWriter: ``<key>.jpg`` / ``.png`` + ``<key>.txt`` per
    sample, plus a sample that carries only a pickle (``.pyd``) and must be skipped, never unpickled."""
    with wds.TarWriter(str(path), encoder=False) as sink:
        for i in range(start, start + n):
            ext, fmt = ("png", "PNG") if i % 2 else ("jpg", "JPEG")
            sink.write({"__key__": f"s{i:04d}", ext: encoded(i, fmt), "txt": f"caption {i}".encode()})
        sink.write({"__key__": f"s{start + n:04d}", "pyd": pickle.dumps(Trap())})
    return path


def test_a_caption_folder_is_read_in_sorted_order_and_limited(tmp_path):
    root = write_folder(tmp_path / "pool")
    pairs = read_image_text(root, RULE)
    assert len(pairs) == 5 and pairs.images.shape == (5, 16, 16, 3) and pairs.images.dtype == np.uint8
    # sorted by path: a/000, a/002, a/004, b/001, b/003
    assert pairs.captions == [f"a photo of the number {i}." for i in (0, 2, 4, 1, 3)]
    with Image.open(root / "b" / "001.png") as img:
        assert np.array_equal(pairs.images[3], RULE.apply(img.convert("RGB")))
    limited = read_image_text(root, RULE, limit=2)
    assert limited.captions == pairs.captions[:2] and np.array_equal(limited.images, pairs.images[:2])


def test_webdataset_shards_by_pattern_skip_the_pickle_and_stop_at_the_limit(tmp_path):
    write_shard(tmp_path / "pool-000.tar", 0, 3)
    write_shard(tmp_path / "pool-001.tar", 3, 3)
    pairs = read_image_text(str(tmp_path / "pool-{000..001}.tar"), RULE)
    assert pairs.captions == [f"caption {i}" for i in range(6)] and pairs.images.shape == (6, 16, 16, 3)
    assert not Trap.fired
    with Image.open(io.BytesIO(encoded(4, "JPEG"))) as img:
        assert np.array_equal(pairs.images[4], RULE.apply(img.convert("RGB")))
    single = read_image_text(tmp_path / "pool-001.tar", RULE, limit=2)
    assert single.captions == ["caption 3", "caption 4"]
    assert read_image_text(str(tmp_path / "pool-{000..001}.tar"), RULE, limit=4).captions == pairs.captions[:4]


def corrupt_cases(tmp: Path) -> list[tuple[str, str]]:
    """(pool path, the file the error must name) for each way a pool can be missing or broken."""
    no_caption = write_folder(tmp / "no_caption", 2)
    (no_caption / "a" / "000.txt").unlink()
    bad_image = write_folder(tmp / "bad_image", 2)
    (bad_image / "b" / "001.png").write_bytes(b"not a png at all")
    write_shard(tmp / "ok-000.tar", 0, 2)
    truncated = tmp / "truncated.tar"
    truncated.write_bytes(write_shard(tmp / "full.tar", 0, 3).read_bytes()[:1500])
    garbage = tmp / "garbage.tar"
    garbage.write_bytes(b"\x00\x01 this is no tar " * 40)
    bad_member = tmp / "bad_member.tar"
    with tarfile.open(bad_member, "w") as tar:
        for name, data in (("k1.jpg", b"\xff\xd8 broken jpeg"), ("k1.txt", b"caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return [(str(tmp / "nowhere"), str(tmp / "nowhere")),
            (str(tmp / "ok-{000..001}.tar"), str(tmp / "ok-001.tar")),
            (str(no_caption), str(no_caption / "a" / "000.jpg")),
            (str(bad_image), str(bad_image / "b" / "001.png")),
            (str(truncated), str(truncated)),
            (str(garbage), str(garbage)),
            (str(bad_member), f"{bad_member}:k1.jpg")]


def test_a_missing_or_corrupt_pool_is_one_line_naming_the_file(tmp_path):
    for path, named in corrupt_cases(tmp_path):
        with pytest.raises(DataError) as err:
            read_image_text(path, RULE)
        assert named in str(err.value) and "\n" not in str(err.value), (path, str(err.value))


def config(*extra: str, store: dict) -> dict:
    items = with_protocol_defaults(["protocol=continual_pretraining", "method=cpt_finetune", *FAST, *extra])
    return compose_config(*items, *(f"{k}={v}" for k, v in store.items()))


def parent_tags(cfg: dict) -> dict[str, str]:
    tracker = Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    (parent,) = tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = '{KIND_PROTOCOL}'")
    return parent.data.tags


def test_a_webdataset_pool_feeds_the_pretraining_sub_batch(tmp_path, store):
    shard = write_shard(tmp_path / "pool.tar", 0, 12)
    cfg = config(f"protocol.pretraining_pool={shard}", "protocol.pretraining_pool_limit=10", store=store)
    result = cp.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
    tags = parent_tags(cfg)
    assert tags["fluxbench.pretraining_pool"] == str(shard) and tags[PRETRAINING_POOL_SIZE_TAG] == "10"
    assert DEVIATION_TAG not in tags
    logged = result["seeds"][0].metrics
    # the report reads this real run: its row and its update path are the seed's logged numbers
    report = build(cfg["tracking"]["uri"], cfg["tracking"]["experiment"])
    row = report.pretraining.set_index("method").loc["cpt_finetune"]
    assert row["A_KA_mean"] == pytest.approx(logged["A_KA"]) and row["gmean_mean"] == pytest.approx(logged["gmean"])
    assert row["steps_per_task"] == logged["budget.steps_per_task"] and row["tasks"] == 2
    path = report.paths[("fomo_digits", "cpt_finetune")]
    assert path.shape == (3, 2)
    assert path[0] == pytest.approx([logged["A_ZS_zero_shot"], logged["A_KA_zero_shot"]], abs=1e-6)
    assert path[-1] == pytest.approx([logged["A_ZS"], logged["A_KA"]], abs=1e-6)
    loop_cfg = config(f"protocol.pretraining_pool={shard}", store=store)
    pairs = cp.data.read_pairs(loop_cfg)
    assert len(pairs) == 12 and pairs.images.shape[1:] == (32, 32, 3)  # the benchmark's image size


def test_no_pool_falls_back_to_half_and_half_and_records_the_deviation(store, capsys):
    cfg = config("benchmark.pretraining_pool=null", store=store)
    opts, deviation = cp.options(cfg, False)
    assert opts["data_mixture"] == {"pretraining": 0.0, "update": 0.5, "buffer": 0.5}
    cp.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
    tags = parent_tags(cfg)
    assert tags[DEVIATION_TAG] == deviation and "no pretraining pool" in deviation
    assert tags["fluxbench.pretraining_pool"] == "none"
    lines = [line for line in capsys.readouterr().err.splitlines() if "deviation" in line]
    assert lines == [f"fluxbench: deviation from the spec: {deviation}"]


def test_the_cli_exits_non_zero_with_one_line_for_a_corrupt_pool(tmp_path, store, capsys):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"no tar here " * 100)
    items = with_protocol_defaults(["protocol=continual_pretraining", "method=cpt_finetune", *FAST,
                                    f"protocol.pretraining_pool={garbage}"])
    with pytest.raises(SystemExit) as code:
        main(["run", *items, *(f"{k}={v}" for k, v in store.items())])
    assert code.value.code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(garbage) in err[0] and err[0].startswith("fluxbench: error:")
