"""``strokeseg serve``'s JSON API without a browser: a case goes through create → status → files on the
stub models, every kind of bad upload is a clear error and the next upload still works, concurrent
uploads queue and all finish, ids and file names from outside never reach the file system, the token
guards the API, and case files go away after their retention time and when the server stops."""
from __future__ import annotations

import gzip
import io
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from serve_stub import AFFINE, LESION_VOXELS, SHAPE, VOXEL_ML, stub_scan
from starlette.testclient import TestClient

from strokeseg.infer.lesion_report import LESION_COLUMNS
from strokeseg.serve.app import create_app, is_loopback


def _nifti_bytes(data: np.ndarray, affine=AFFINE) -> bytes:
    buffer = io.BytesIO()
    image = nib.Nifti1Image(data, affine)
    buffer.write(gzip.compress(image.to_bytes()))
    return buffer.getvalue()


GOOD = _nifti_bytes(stub_scan())


@pytest.fixture
def client(stub_models, tmp_path):
    with TestClient(create_app(stub_models, work_dir=tmp_path)) as client:
        yield client


def upload(client, content: bytes = GOOD, field: str = "t1w", **kwargs):
    return client.post("/api/cases", files={field: ("scan.nii.gz", content)}, **kwargs)


def wait(client, case_id: str, timeout: float = 60.0, **kwargs) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/api/cases/{case_id}", **kwargs).json()
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"case {case_id} did not finish: {status}")


def test_a_case_goes_through_create_status_and_files(client, tmp_path):
    info = client.get("/api/info").json()
    assert info["channels"] == ["t1w"] and "not for clinical use" in info["notice"].lower()
    created = upload(client)
    assert created.status_code == 202 and created.json()["status"] == "queued"
    status = wait(client, created.json()["id"])
    result = status["result"]
    assert status["status"] == "done" and status["error"] is None
    assert result["lesion_count"] == 2 and result["resampled"] is False
    assert result["total_volume_ml"] == pytest.approx(sum(LESION_VOXELS) * VOXEL_ML)
    assert [lesion["voxels"] for lesion in result["lesions"]] == list(LESION_VOXELS)
    assert result["agreement"] == {"axial": 1.0, "sagittal": 1.0, "coronal": 1.0}

    mask_path = tmp_path / "mask.nii.gz"
    mask_path.write_bytes(client.get(result["files"]["mask"]).content)
    mask = nib.load(mask_path)
    assert mask.shape == SHAPE and np.allclose(mask.affine, AFFINE) and int(np.asarray(mask.dataobj).sum()) == 288
    table = pd.read_csv(io.BytesIO(client.get(result["files"]["table"]).content))
    assert list(table["voxels"]) == list(LESION_VOXELS)
    # scan.nii.gz declares no MNI space (sform code 2, no space entity): the reason once, no location.
    assert list(table.columns) == list(LESION_COLUMNS)
    assert result["location_note"].startswith("not in MNI space (its sform code is 2")
    assert all(lesion["hemisphere"] == "" and lesion["left_share"] is None for lesion in result["lesions"])
    assert result["location"] == {"hemisphere": "", "location_class": "", "top_regions": ""}
    overlay = client.get(result["files"]["overlay"])
    assert overlay.headers["content-type"] == "image/png" and overlay.content[:4] == b"\x89PNG"
    assert client.get(result["files"]["scan"]).content == GOOD            # the viewer shows what was sent


def test_a_scan_named_in_mni_space_has_its_lesions_located(client):
    response = client.post("/api/cases", files={"t1w": ("sub-1_space-MNI152NLin2009aSym_T1w.nii.gz", GOOD)})
    result = wait(client, response.json()["id"])["result"]
    assert result["location_note"] == "" and result["location"]["hemisphere"] == "bilateral"
    lesions = result["lesions"]
    assert [lesion["hemisphere"] for lesion in lesions] == ["left", "right"]       # x < 0 and x > 0 blocks
    assert all(lesion["top_regions"] and lesion["location_class"] for lesion in lesions)
    assert [lesion["left_share"] for lesion in lesions] == [1.0, 0.0]
    table = pd.read_csv(io.BytesIO(client.get(result["files"]["table"]).content), keep_default_na=False)
    assert list(table["top_regions"]) == [lesion["top_regions"] for lesion in lesions]


def _truncated() -> bytes:
    return GOOD[: len(GOOD) // 2]


BAD_SCANS = {
    "not NIfTI": (b"this is not an image" * 50, "not a NIfTI file"),
    "truncated gzip": (_truncated(), "corrupt or truncated gzip"),
    "4-D": (_nifti_bytes(np.stack([stub_scan()] * 2, axis=-1)), "4-D"),
    "NaN": (_nifti_bytes(np.where(stub_scan() > 900, np.nan, stub_scan()).astype(np.float32)), "NaN"),
    "constant": (_nifti_bytes(np.full(SHAPE, 7.0, np.float32)), "constant"),
}


@pytest.mark.parametrize("kind", list(BAD_SCANS))
def test_a_bad_scan_fails_its_case_with_one_line_and_the_next_upload_works(client, kind):
    content, says = BAD_SCANS[kind]
    status = wait(client, upload(client, content).json()["id"])
    assert status["status"] == "failed" and says in status["error"] and "\n" not in status["error"]
    assert status["error"].startswith("t1w (scan.nii.gz)")                  # never the server's folder
    assert wait(client, upload(client).json()["id"])["status"] == "done"


@pytest.mark.parametrize("fields, says", [
    ({"dwi": GOOD}, "missing t1w; not a channel of these models: dwi"),
    ({"t1w": GOOD, "flair": GOOD}, "not a channel of these models: flair"),
    ({"t1w": b""}, "t1w: the file is empty"),
])
def test_a_wrong_set_of_channels_is_refused_at_upload(client, fields, says):
    response = client.post("/api/cases", files={name: ("scan.nii.gz", content) for name, content in fields.items()})
    assert response.status_code == 400 and says in response.json()["error"]


def test_an_upload_over_the_limit_is_refused(stub_models, tmp_path):
    with TestClient(create_app(stub_models, work_dir=tmp_path, max_upload_mb=0.01)) as client:
        response = upload(client)
        assert response.status_code == 413 and "limit of 0.01 MB" in response.json()["error"]
        assert list(Path(tmp_path).glob("*/*")) == []                       # nothing was stored


def test_concurrent_uploads_queue_and_all_finish(client):
    ids, errors = [], []

    def send():
        response = upload(client)
        (ids if response.status_code == 202 else errors).append(response.json().get("id"))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(ids)) == 4
    assert [wait(client, case_id)["status"] for case_id in ids] == ["done"] * 4


def test_ids_and_names_from_outside_never_reach_the_file_system(client):
    case_id = wait(client, upload(client).json()["id"])["id"]
    other = "A" * 22                                                       # the shape of an id, not one
    for path in (f"/api/cases/{other}", f"/api/cases/{other}/files/mask.nii.gz",
                 f"/api/cases/{case_id}/files/..%2F..%2Fetc%2Fpasswd", f"/api/cases/{case_id}/files/state.json",
                 f"/api/cases/{case_id}/files/.mask.nii.gz.tmp.nii.gz", "/api/cases/..%2F..%2Fetc/files/passwd"):
        assert client.get(path).status_code == 404, path


def test_the_token_guards_the_api_but_not_the_page(stub_models, tmp_path):
    with TestClient(create_app(stub_models, work_dir=tmp_path, token="s3cret")) as client:
        assert client.get("/").status_code == 200
        assert client.get("/api/info").json()["token_required"]            # tells the page to ask for one
        assert upload(client).status_code == 401
        assert upload(client, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(f"/api/cases/{'A' * 22}", params={"token": "wrong"}).status_code == 401
        created = upload(client, params={"token": "s3cret"})
        assert created.status_code == 202
        assert wait(client, created.json()["id"], params={"token": "s3cret"})["status"] == "done"


def test_case_files_are_removed_after_retention_and_when_the_server_stops(stub_models, tmp_path):
    app = create_app(stub_models, work_dir=tmp_path, retention_minutes=1)
    with TestClient(app) as client:
        case_id = wait(client, upload(client).json()["id"])["id"]
        store = app.state.server.store
        folder = store.root / case_id
        assert (folder / "mask.nii.gz").is_file()
        assert store.expire(now=time.monotonic() + 30) == 0 and folder.is_dir()
        assert store.expire(now=time.monotonic() + 61) == 1 and not folder.exists()
        assert client.get(f"/api/cases/{case_id}").status_code == 404
        wait(client, upload(client).json()["id"])
    assert not store.root.exists()


def test_only_loopback_addresses_count_as_local():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


def test_a_bad_models_folder_is_one_line_and_exit_2(tmp_path, capsys):
    from strokeseg import cli

    assert cli.main(["serve", "--models", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models folder not found" in err[0]
