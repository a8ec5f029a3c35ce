"""Prove that tests/hub_server.py works with the real huggingface_hub and diffusers clients.

``HF_ENDPOINT`` (and ``HF_HUB_DISABLE_XET``) are read when huggingface_hub / diffusers are imported,
so every client scenario runs in a fresh subprocess whose environment points at the server; the
server itself runs in a thread of the pytest process, where the tests inspect its state.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.hub_client import run_client
from tests.hub_server import HubServer, git_blob_sha1


@pytest.fixture
def hub():
    with HubServer(lfs_threshold=1024) as server:
        yield server

def make_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


BIG = bytes(range(256)) * 8  # 2 KiB > lfs_threshold=1024 -> LFS
FILES = {"config.json": b'{"a": 1}\n', "sub/notes.txt": b"hello\n", "weights.dat": BIG}


def test_create_repo_exist_ok_and_whoami(hub, tmp_path):
    out = run_client(hub, tmp_path, """
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        url = api.create_repo("demo")
        try:
            api.create_repo("tester/demo")
            conflict = None
        except HfHubHTTPError as err:
            conflict = err.response.status_code
        again = api.create_repo("tester/demo", exist_ok=True)
        emit({"repo_id": url.repo_id, "again": again.repo_id, "conflict": conflict, "me": api.whoami()["name"],
              "files": api.list_repo_files("tester/demo")})
    """)
    assert out == {"repo_id": "tester/demo", "again": "tester/demo", "conflict": 409, "me": "tester",
                   "files": [".gitattributes"]}
    assert all(r.has_auth for r in hub.requests)


def test_upload_folder_legacy_lfs_path(hub, tmp_path):
    folder = make_folder(tmp_path / "up", FILES)
    out = run_client(hub, tmp_path, f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("tester/lfs")
        info = api.upload_folder(folder_path={str(folder)!r}, repo_id="tester/lfs", commit_message="add files")
        tree = {{f.path: (f.lfs.sha256 if getattr(f, "lfs", None) else None)
                for f in api.list_repo_tree("tester/lfs", recursive=True)}}
        emit({{"oid": info.oid, "tree": tree}})
    """)
    assert hub.files("tester/lfs") == {".gitattributes": hub.files("tester/lfs")[".gitattributes"], **FILES}
    head = hub.commits("tester/lfs")[-1]
    assert out["oid"] == head.sha and head.summary == "add files"
    assert out["tree"] == {".gitattributes": None, "config.json": None, "sub": None, "sub/notes.txt": None,
                           "weights.dat": hashlib.sha256(BIG).hexdigest()}
    routes = [(r.method, r.path) for r in hub.requests]
    assert ("POST", "/tester/lfs.git/info/lfs/objects/batch") in routes
    assert ("PUT", f"/_lfs/upload/{hashlib.sha256(BIG).hexdigest()}") in routes
    assert not any("xet" in path for _, path in routes)


@pytest.mark.skipif(importlib.util.find_spec("hf_xet") is None, reason="hf_xet not installed")
def test_upload_folder_with_xet_enabled_against_regular_only(tmp_path):
    folder = make_folder(tmp_path / "up", FILES)
    with HubServer(lfs_threshold=1024, regular_only=True, fail_next_commits=1) as hub:
        out = run_client(hub, tmp_path, f"""
            from huggingface_hub import HfApi
            from huggingface_hub.utils._runtime import is_xet_available
            api = HfApi()
            api.create_repo("tester/piped")
            info = api.upload_folder(folder_path={str(folder)!r}, repo_id="tester/piped")
            emit({{"xet": is_xet_available(), "oid": info.oid}})
        """, xet=True)
        assert out["xet"] is True  # the pipelined (Xet-capable) upload path really ran
        assert out["oid"] == hub.commits("tester/piped")[-1].sha
        assert {p: d for p, d in hub.files("tester/piped").items() if p in FILES} == FILES
        routes = [(r.method, r.path, r.status) for r in hub.requests]
        assert not any("xet-" in path or "/lfs" in path for _, path, _ in routes)
        # the pipelined path retries a failed commit (the legacy path does not, see test_fault_injection)
        assert [s for m, p, s in routes if p.startswith("/api/models/tester/piped/commit/")] == [500, 200]


@pytest.mark.skipif(importlib.util.find_spec("hf_xet") is None, reason="hf_xet not installed")
def test_xet_enabled_against_lfs_mode_fails_without_fallback(hub, tmp_path):
    """Documents why tests need HF_HUB_DISABLE_XET=1 or regular_only=True: the client picks Xet by itself
    for every "lfs" file and does not fall back when the server has no xet-write-token route."""
    folder = make_folder(tmp_path / "up", FILES)
    out = run_client(hub, tmp_path, f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("tester/nofallback")
        try:
            api.upload_folder(folder_path={str(folder)!r}, repo_id="tester/nofallback")
            emit({{"error": None}})
        except Exception as err:
            emit({{"error": type(err).__name__}})
    """, xet=True)
    assert out == {"error": "ConnectionError"}
    assert ("GET", "/api/models/tester/nofallback/xet-write-token/main", 404) in [
        (r.method, r.path, r.status) for r in hub.requests]
    assert len(hub.commits("tester/nofallback")) == 1  # nothing was committed


def test_pinned_commit_downloads_old_content(hub, tmp_path):
    folder = make_folder(tmp_path / "up", FILES)
    out = run_client(hub, tmp_path, f"""
        import hashlib, pathlib
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download
        api = HfApi()
        api.create_repo("tester/pin")
        first = api.upload_folder(folder_path={str(folder)!r}, repo_id="tester/pin").oid
        api.upload_file(path_or_fileobj=b"changed\\n", path_in_repo="sub/notes.txt", repo_id="tester/pin")
        api.upload_file(path_or_fileobj=b"x" * 3000, path_in_repo="weights.dat", repo_id="tester/pin")
        digest = lambda *parts: hashlib.sha256(pathlib.Path(*parts).read_bytes()).hexdigest()
        old_notes = digest(hf_hub_download("tester/pin", "sub/notes.txt", revision=first, cache_dir="own_cache"))
        old = snapshot_download("tester/pin", revision=first)
        new = snapshot_download("tester/pin")
        emit({{"first": first, "main_sha": api.model_info("tester/pin").sha, "old_notes": old_notes,
              "old_snapshot": [digest(old, "sub/notes.txt"), digest(old, "weights.dat")],
              "new_snapshot": [digest(new, "sub/notes.txt"), digest(new, "weights.dat")]}})
    """)
    sha = lambda data: hashlib.sha256(data).hexdigest()  # noqa: E731
    commits = hub.commits("tester/pin")
    assert len(commits) == 4 and out["first"] == commits[1].sha and out["main_sha"] == commits[-1].sha
    assert out["old_notes"] == sha(b"hello\n")
    assert out["old_snapshot"] == [sha(b"hello\n"), sha(BIG)]
    assert out["new_snapshot"] == [sha(b"changed\n"), sha(b"x" * 3000)]


def test_missing_file_revision_and_repo_errors(hub, tmp_path):
    sha = hub.seed("tester/errs", {"config.json": b"{}"})
    out = run_client(hub, tmp_path, """
        from huggingface_hub import hf_hub_download, HfApi
        from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError
        caught = {}
        for name, call in {
            "entry": lambda: hf_hub_download("tester/errs", "nope.txt"),
            "revision": lambda: hf_hub_download("tester/errs", "config.json", revision="no-such-branch"),
            "repo": lambda: HfApi().model_info("tester/missing"),
        }.items():
            try:
                call()
            except Exception as err:  # the client raises subclasses, e.g. RemoteEntryNotFoundError
                kinds = (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError)
                caught[name] = [kind.__name__ for kind in kinds if isinstance(err, kind)]
        emit(caught)
    """)
    assert out == {"entry": ["EntryNotFoundError"], "revision": ["RevisionNotFoundError"],
                   "repo": ["RepositoryNotFoundError"]}
    # the absence is cached per commit, as with the real Hub (X-Repo-Commit on the 404)
    assert (tmp_path / "hf_home" / "hub" / "models--tester--errs" / ".no_exist" / sha / "nope.txt").exists()


def test_reupload_skips_unchanged_files(hub, tmp_path):
    folder = make_folder(tmp_path / "up", FILES)
    code = f"""
        from huggingface_hub import HfApi
        api = HfApi()
        api.create_repo("tester/skip", exist_ok=True)
        emit({{"oid": api.upload_folder(folder_path={str(folder)!r}, repo_id="tester/skip").oid}})
    """
    first = run_client(hub, tmp_path, code)["oid"]
    hub.clear_log()
    assert run_client(hub, tmp_path, code)["oid"] == first  # nothing changed: no new commit, no upload
    assert not any(r.method == "PUT" or "/commit/" in r.path for r in hub.requests)
    (folder / "config.json").write_bytes(b'{"a": 2}\n')
    second = run_client(hub, tmp_path, code)["oid"]
    head = hub.commits("tester/skip")[-1]
    assert second == head.sha != first and head.added == ["config.json"]


def test_diffusers_pipeline_push_and_from_pretrained(hub, tmp_path):
    push = run_client(hub, tmp_path, """
        import torch
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
        from safetensors.torch import save_file
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(4, 8),
                           layers_per_block=1, norm_num_groups=4,
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10))
        pipe.push_to_hub("tester/tiny-ddpm")
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, "reference.safetensors")
        emit({})
    """)
    assert push == {}
    paths = set(hub.files("tester/tiny-ddpm"))
    assert {"model_index.json", "README.md", "scheduler/scheduler_config.json", "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors"} <= paths
    assert any(r.method == "PUT" and r.path.startswith("/_lfs/upload/") for r in hub.requests)
    assert not any("checkpoint-" in p for p in hub.committed_paths())

    pull = run_client(hub, tmp_path, """
        import torch
        from diffusers import DDPMPipeline
        from safetensors.torch import load_file
        pipe = DDPMPipeline.from_pretrained("tester/tiny-ddpm")
        ref = load_file("reference.safetensors")
        got = pipe.unet.state_dict()
        image = pipe(num_inference_steps=2, output_type="np", generator=torch.manual_seed(0)).images
        emit({"same_keys": sorted(ref) == sorted(got), "equal": all(torch.equal(ref[k], got[k]) for k in ref),
              "scheduler": type(pipe.scheduler).__name__, "shape": list(image.shape)})
    """, home="fresh_home")  # fresh cache: everything comes over HTTP
    assert pull == {"same_keys": True, "equal": True, "scheduler": "DDPMScheduler", "shape": [1, 8, 8, 1]}


def test_require_token(tmp_path):
    with HubServer(require_token="secret") as hub:
        code = """
            from huggingface_hub import HfApi
            from huggingface_hub.errors import HfHubHTTPError
            try:
                emit({"url": HfApi().create_repo("tester/guarded").repo_id})
            except HfHubHTTPError as err:
                emit({"status": err.response.status_code})
        """
        assert run_client(hub, tmp_path, code, token=None) == {"status": 401}
        assert run_client(hub, tmp_path, code, token="wrong") == {"status": 401}
        assert run_client(hub, tmp_path, code, token="secret") == {"url": "tester/guarded"}
        creates = [(r.has_auth, r.status) for r in hub.requests if r.path == "/api/repos/create"]
        assert creates == [(False, 401), (True, 401), (True, 200)]
        assert "secret" not in repr(hub.requests)  # the log never keeps the token value


def test_fault_injection_surfaces_http_error(hub, tmp_path):
    hub.seed("tester/faulty", {})
    hub.fail_next_commits = 1
    out = run_client(hub, tmp_path, """
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError
        api = HfApi()
        try:
            api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="tester/faulty")
            first = None
        except HfHubHTTPError as err:
            first = err.response.status_code
        second = api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id="tester/faulty").oid
        emit({"first": first, "second": second})
    """)
    assert out == {"first": 500, "second": hub.commits("tester/faulty")[-1].sha}
    assert hub.files("tester/faulty")["a.txt"] == b"1"


def test_protocol_details_without_client(hub):
    """Range requests, chunked LFS PUTs and error headers, straight over HTTP."""
    sha = hub.seed("tester/raw", {"a.txt": b"0123456789", "w.bin": b"\x00" * 10})
    url = f"{hub.endpoint}/tester/raw/resolve/{sha}"
    req = urllib.request.Request(f"{url}/a.txt", headers={"Range": "bytes=4-"})
    with urllib.request.urlopen(req) as resp:
        assert resp.status == 206 and resp.read() == b"456789"
        assert resp.headers["Content-Range"] == "bytes 4-9/10" and resp.headers["X-Repo-Commit"] == sha
    with urllib.request.urlopen(urllib.request.Request(f"{url}/a.txt", method="HEAD")) as resp:
        assert resp.headers["ETag"] == f'"{git_blob_sha1(b"0123456789")}"' and resp.headers["Content-Length"] == "10"
    with urllib.request.urlopen(urllib.request.Request(f"{url}/w.bin", method="HEAD")) as resp:
        assert resp.headers["X-Linked-Etag"] == f'"{hashlib.sha256(bytes(10)).hexdigest()}"'
        assert resp.headers["X-Linked-Size"] == "10"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{url}/missing.txt")
    assert err.value.code == 404 and err.value.headers["X-Error-Code"] == "EntryNotFound"
    assert err.value.headers["X-Repo-Commit"] == sha and "error" in json.loads(err.value.read())

    data = b"chunked body " * 100
    oid = hashlib.sha256(data).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", hub.port)
    conn.request("PUT", f"/_lfs/upload/{oid}", body=iter([data[:500], data[500:]]), encode_chunked=True)
    assert conn.getresponse().status == 200
    conn.close()
    assert oid in hub._lfs_uploaded
