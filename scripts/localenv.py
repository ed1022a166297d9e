"""What the checks that run the real binary share: the environment that points it at
this machine's services (databases, Redis keys, queues and topics named after the
check, which scripts/test.sh clears), and starting it with both listeners on free
ports, read from what it prints."""

import os
import subprocess
import tempfile
import time


def service_env(tag: str, admin_token: str, jwt_secret: str) -> dict:
    """The process environment plus FLASHSALE__ overrides of the check named `tag`."""
    pg = f"postgres://postgres@127.0.0.1:5432/fs_test_{tag}_"
    env = dict(os.environ)
    env.update({
        "FLASHSALE__ADMIN__TOKEN": admin_token,
        "FLASHSALE__AUTH__JWT_SECRET": jwt_secret,
        "FLASHSALE__CATALOG__URL": pg + "catalog",
        "FLASHSALE__SHARDS__URLS": f'["{pg}shard_0", "{pg}shard_1"]',
        "FLASHSALE__INVENTORY__URLS": '["redis://127.0.0.1:6380/14", "redis://127.0.0.1:6381/15"]',
        "FLASHSALE__INVENTORY__KEY_PREFIX": f"t{tag}",
        "FLASHSALE__QUEUE__URL": "amqp://guest:guest@127.0.0.1:5672/%2f",
        "FLASHSALE__QUEUE__ORDERS_QUEUE": f"fstest.{tag}.orders",
        "FLASHSALE__QUEUE__NOTIFICATIONS_QUEUE": f"fstest.{tag}.notifications",
        "FLASHSALE__EVENTS__BROKERS": "127.0.0.1:9092",
        "FLASHSALE__EVENTS__TOPIC_PREFIX": f"fstest.{tag}.",
        "FLASHSALE__EVENTS__REPLICATION_FACTOR": "1",
        "FLASHSALE__HTTP__LISTEN": "127.0.0.1:0",
        "FLASHSALE__ADMIN__LISTEN": "127.0.0.1:0",
        "FLASHSALE__SHUTDOWN__DRAIN_SECS": "1",
        "RUST_LOG": "warn",
    })
    return env


def start(command: list, env: dict, cwd=None) -> tuple:
    """Starts `flashsale serve …`; answers (process, public URL or None, admin URL or
    None), the URLs as it printed them within a minute. Its log goes to a file
    (`log(proc)` reads it), never to a pipe that could fill up and stall it."""
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=tempfile.TemporaryFile(mode="w+"), text=True)
    public = admin = None
    deadline = time.time() + 60
    while admin is None and time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        words = line.split()
        if line.strip().startswith("public API") and words[-1].startswith("http"):
            public = words[-1]
        elif line.strip().startswith("admin API"):
            admin = words[-1].removesuffix("/admin")
    return proc, public, admin


def log(proc) -> str:
    """What a process started by `start` has logged."""
    proc.stderr.seek(0)
    return proc.stderr.read()
