"""A real S3 API on 127.0.0.1 for tests: moto's server in a thread, dummy credentials.

Credentials and AWS config come from the environment the fixture sets (`aws_test_env`), never
from the home folder: the config and credentials files point at an empty file the test owns.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlre.supervisor import free_port

REGION = "us-east-1"


def aws_test_env(folder: Path) -> dict[str, str]:
    """Environment for AWS clients in tests: dummy keys, empty config files, no metadata calls."""
    empty = folder / "aws-empty"
    empty.write_text("")
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": str(empty),
        "AWS_SHARED_CREDENTIALS_FILE": str(empty),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": REGION,
    }


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server."""

    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def uri(self, bucket: str, prefix: str = "") -> str:
        """pyarrow URI of `bucket/prefix` on this server (plain HTTP, fixed region)."""
        path = f"{bucket}/{prefix}".rstrip("/")
        return f"s3://{path}?endpoint_override=127.0.0.1:{self.port}&scheme=http&region={REGION}"

    def client(self, service: str = "s3") -> Any:
        """A boto3 client of `service` on this server (moto serves every service on one port)."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION)

    def user_with_policy(self, name: str, policy: str) -> tuple[str, str]:
        """(access key id, secret) of a new IAM user holding `policy` as its inline policy."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=policy)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @contextmanager
    def enforcing_iam(self) -> Iterator[None]:
        """Inside the block every request is checked against the caller's IAM policies."""
        self._reset_auth("0")
        try:
            yield
        finally:
            self._reset_auth("inf")

    def _reset_auth(self, requests_before_auth: str) -> None:
        """moto's switch: authorize requests after this many (inf: never)."""
        import requests

        response = requests.post(
            f"{self.endpoint}/moto-api/reset-auth", data=requests_before_auth, timeout=10
        )
        response.raise_for_status()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under `prefix`, sorted."""
        listing = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listing.get("Contents", []))


@contextmanager
def running_s3() -> Iterator[S3Server]:
    """Start moto's S3 server on a free port; stopped when the block exits."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(port)
    finally:
        server.stop()
