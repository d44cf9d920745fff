"""The shared-memory token a server publishes for its own user's clients on its host, without a server.

A token is read only from a private folder and file of this user's, for a loopback address, and
only while the server that wrote it lives; anything else sends the client over gRPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fcn_deploy.backends import remote_shm


@pytest.fixture
def runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    return tmp_path


def test_a_published_token_is_private_and_read_back_for_loopback_addresses_only(runtime_dir):
    path = remote_shm.publish_token(8101, "secret")
    assert path == runtime_dir / f"fcn-deploy-{os.getuid()}" / "grpc-8101.json"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["grpc-8101.json"]  # no temporary file left behind
    for address in ("127.0.0.1:8101", "localhost:8101", "[::1]:8101"):
        assert remote_shm.read_token(address) == "secret"
    assert remote_shm.read_token("10.1.2.3:8101") is None  # another host cannot map this host's memory
    assert remote_shm.read_token("127.0.0.1:8102") is None  # no server published for that port
    remote_shm.withdraw_token(path)
    assert remote_shm.read_token("127.0.0.1:8101") is None and not path.exists()


def test_a_token_others_could_read_or_plant_is_not_used(runtime_dir):
    path = remote_shm.publish_token(8103, "secret")
    path.chmod(0o644)
    assert remote_shm.read_token("127.0.0.1:8103") is None
    path.chmod(0o600)
    path.parent.chmod(0o755)
    assert remote_shm.read_token("127.0.0.1:8103") is None
    assert remote_shm.publish_token(8104, "other") is None  # a server does not publish into a folder others can read


def test_a_token_left_by_a_server_that_died_is_not_used(runtime_dir):
    path = remote_shm.publish_token(8105, "secret")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "pid": int(gone.stdout)}))
    assert remote_shm.read_token("127.0.0.1:8105") is None
    path.write_text("not json")
    assert remote_shm.read_token("127.0.0.1:8105") is None
