"""The shared store's contract, the same for a folder and for an S3 bucket (moto's S3 server
process): whole writes, one winner of racing conditional writes, ranged reads, listing, and the
conversion job lease built on them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_hub.errors import StoreError, StoreObjectMissingError
from cloud_hub.job_records import JobRecords
from cloud_hub.settings import StoreSettings, load_settings
from cloud_hub.store import ObjectStore, check_key, open_store
from cloud_hub.store.filesystem import FilesystemStore
from cloud_hub.store.s3 import S3Store
from tests.support.store import CREDENTIALS, S3Server


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(workdir=tmp_path_factory.mktemp("s3"))
    server.start()
    server.create_bucket("store-contract")
    yield server
    server.stop()


@pytest.fixture(params=["filesystem", "s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ObjectStore]:
    if request.param == "filesystem":
        yield FilesystemStore(tmp_path / "store")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    objects = S3Store(
        StoreSettings(
            kind="s3",
            bucket="store-contract",
            prefix=f"t/{tmp_path.name}",
            endpoint_url=server.endpoint,
            addressing_style="path",
        )
    )
    yield objects
    objects.close()


def test_put_get_stat_and_replace(store: ObjectStore) -> None:
    assert store.stat("a/b/c.bin") is None
    store.put("a/b/c.bin", b"first")
    info = store.stat("a/b/c.bin")
    assert info is not None
    assert info.size_bytes == 5
    assert store.get("a/b/c.bin") == b"first"
    store.put("a/b/c.bin", b"second, longer")
    assert store.get("a/b/c.bin") == b"second, longer"
    with pytest.raises(StoreObjectMissingError):
        store.get("a/b/missing")
    with pytest.raises(StoreObjectMissingError):
        store.read("nothing/here")


def test_ranged_reads(store: ObjectStore) -> None:
    data = bytes(range(256)) * 5000  # over one read chunk
    store.put("blob", data)
    assert b"".join(store.read("blob")) == data
    assert b"".join(store.read("blob", 1000)) == data[1000:]
    assert b"".join(store.read("blob", 10, 20)) == data[10:20]
    assert b"".join(store.read("blob", 5, 5)) == b""


def test_one_of_racing_conditional_writes_wins(store: ObjectStore) -> None:
    winners: list[int] = []
    start = threading.Barrier(8)

    def write(index: int) -> None:
        start.wait()
        if store.put_if_absent("claim", str(index).encode()):
            winners.append(index)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert store.get("claim") == str(winners[0]).encode()
    assert store.put_if_absent("claim", b"late") is False


def test_files_copies_listing_and_deletion(store: ObjectStore, tmp_path: Path) -> None:
    local = tmp_path / "model.bin"
    local.write_bytes(b"x" * 3000)
    store.put_file("m/1/p/model.bin", local)
    store.copy("m/1/p/model.bin", "m/2/p/model.bin")
    store.put("m/2/p/manifest.json", b"{}")
    store.put(".uploads/abc", b"u")
    store.download("m/2/p/model.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == local.read_bytes()
    assert sorted(i.key for i in store.list_objects("m/")) == [
        "m/1/p/model.bin",
        "m/2/p/manifest.json",
        "m/2/p/model.bin",
    ]
    assert [i.key for i in store.list_objects("m/2/p/man")] == ["m/2/p/manifest.json"]
    assert store.children("") == [".uploads", "m"]
    assert store.children("m/") == ["1", "2"]
    store.delete_prefix("m/2/")
    assert store.children("m/") == ["1"]
    store.delete("m/1/p/model.bin")
    store.delete("m/1/p/model.bin")  # absent: nothing
    assert store.list_objects("m/") == []


def test_keys_never_leave_the_store(store: ObjectStore) -> None:
    for bad in ("../x", "a/../../x", "/abs", "a//b", ""):
        with pytest.raises(ValueError, match="not a store key"):
            check_key(bad)
        with pytest.raises(StoreObjectMissingError):
            store.get(bad)


def test_a_job_lease_has_one_holder_and_is_taken_over_when_it_expires(
    store: ObjectStore,
) -> None:
    records = JobRecords(store)
    records.create("job1", {"id": "job1"})
    assert records.queued() == ["job1"]
    first = records.take("job1", "replica-a", lease_s=60)
    assert first is not None
    assert (first.owner, first.attempt) == ("replica-a", 1)
    assert records.take("job1", "replica-b", lease_s=60) is None  # held
    renewed = records.renew("job1", first, lease_s=0.2)
    assert renewed is not None
    assert renewed.generation == first.generation + 1
    time.sleep(0.3)  # replica-a stops renewing: its lease runs out
    second = records.take("job1", "replica-b", lease_s=60)
    assert second is not None
    assert (second.owner, second.attempt) == ("replica-b", 2)
    assert records.renew("job1", renewed, lease_s=60) is None  # replica-a learns it lost
    assert records.lease("job1") == second
    records.release("job1", second)
    third = records.take("job1", "replica-c", lease_s=60)
    assert third is not None
    assert third.attempt == 3
    assert records.write_once("job1", "result.json", {"attempt": 3})
    assert not records.write_once("job1", "result.json", {"attempt": 2})
    records.dequeue("job1")
    assert records.queued() == []


def test_settings_choose_the_store(tmp_path: Path) -> None:
    settings = load_settings(None, model_repository=tmp_path)
    default = open_store(settings)
    assert isinstance(default, FilesystemStore)
    assert default.root == tmp_path / ".artifacts"
    with pytest.raises(Exception, match=r"store\.kind s3 needs store\.bucket"):
        load_settings(None, model_repository=tmp_path, store={"kind": "s3"})


def test_an_unreachable_bucket_is_a_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    objects = S3Store(
        StoreSettings(
            kind="s3", bucket="b-unreachable", endpoint_url="http://127.0.0.1:9", timeout_s=0.5
        )
    )
    with pytest.raises(StoreError, match="b-unreachable"):
        objects.children("")
    assert StoreError.status == 503


def test_captured_shards_in_the_store_are_listed_read_and_deleted(store: ObjectStore) -> None:
    from cloud_hub.capture import ObjectShardStore, shard_name
    from cloud_hub.errors import CaptureNotFoundError

    shards = ObjectShardStore(store)
    older, newer = shard_name(1_000.0, 3), shard_name(2_000.0, 5)
    shards.write_shard("clf", newer, b"second")
    shards.write_shard("clf", older, b"first")
    shards.write_shard("other", shard_name(1_500.0, 1), b"x")
    store.put(".capture/clf/not-a-shard.txt", b"ignored")
    listed = shards.list("clf")
    assert [(i.shard, i.records, i.size_bytes) for i in listed] == [(older, 3, 5), (newer, 5, 6)]
    assert [i.model for i in shards.list()] == ["clf", "other", "clf"]
    assert shards.read("clf", older) == b"first"
    assert shards.delete("clf", older) is True
    assert shards.delete("clf", older) is False
    with pytest.raises(CaptureNotFoundError):
        shards.read("clf", older)
    with pytest.raises(CaptureNotFoundError):
        shards.read("../x", newer)
