"""Variant files in an S3-compatible object store (boto3), verified by sha256.

Uploads carry the file's SHA-256 as an S3 checksum, so the store itself refuses bytes that
do not match (BadDigest); large files go up in parts, each part checked the same way, and
the object's composite checksum is then compared with one computed here from the file.
Downloads are hashed and compared with the registry's record by the caller.
"""

import base64
import hashlib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from app.errors import SparsegateError

# Parts of this size above this size: the composite checksum is computed with the same.
PART = 64 << 20


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def expected_checksum(path: Path, size: int) -> str:
    """The ChecksumSHA256 S3 reports for this file uploaded with `PART`-sized parts."""
    with path.open("rb") as f:
        if size < PART:
            return _b64(hashlib.sha256(f.read()).digest())
        parts = []
        while block := f.read(PART):
            parts.append(hashlib.sha256(block).digest())
    return f"{_b64(hashlib.sha256(b''.join(parts)).digest())}-{len(parts)}"


class ObjectStore:
    """One bucket and key prefix, e.g. `s3://sparsegate/registry`. The endpoint and the
    credentials come from boto3's usual settings (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION, or a profile)."""

    def __init__(self, url: str, *, create: bool = False) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise SparsegateError(
                f"SPARSEGATE_ARTIFACTS must look like s3://bucket/prefix, not {url!r}"
            )
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        session = boto3.session.Session()
        self._client = session.client(
            "s3",
            region_name=session.region_name or "us-east-1",
            # Fail fast at start on an unreachable store rather than retry for minutes.
            config=Config(
                connect_timeout=5,
                retries={"max_attempts": 3, "mode": "standard"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.endpoint = self._client.meta.endpoint_url
        self._transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
        self._check(create)

    def _fail(self, action: str, error: Exception) -> SparsegateError:
        from botocore.exceptions import ClientError

        where = f"the artifact store {self.url} at {self.endpoint}"
        if isinstance(error, ClientError):
            code = error.response.get("Error", {}).get("Code", "")
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"} or (
                status == 403
            ):
                return SparsegateError(
                    f"{where} refused the credentials while trying to {action} ({code or 403}); "
                    "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
                )
            return SparsegateError(f"{where}: could not {action}: {code or error}")
        return SparsegateError(f"cannot reach {where} to {action}: {error}")

    def _check(self, create: bool) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status != 404:
                raise self._fail("open the bucket", e) from None
            if not create:
                raise SparsegateError(
                    f"no bucket {self.bucket!r} in the artifact store at {self.endpoint}: "
                    "import a model first (it creates the bucket) or create it"
                ) from None
            try:
                self._client.create_bucket(Bucket=self.bucket)
            except ClientError as e2:
                code = e2.response.get("Error", {}).get("Code", "")
                if code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                    raise self._fail("create the bucket", e2) from None
        except BotoCoreError as e:
            raise self._fail("open the bucket", e) from None

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p)

    def upload(self, path: Path, key: str, sha256: str) -> None:
        """Upload a file the store verifies by SHA-256; raise if the stored object differs."""
        from botocore.exceptions import BotoCoreError, ClientError

        size = path.stat().st_size
        try:
            if size < PART:
                # One request: the store checks the whole file's SHA-256 as it arrives.
                with path.open("rb") as f:
                    self._client.put_object(
                        Bucket=self.bucket,
                        Key=self.key(key),
                        Body=f,
                        ChecksumSHA256=_b64(bytes.fromhex(sha256)),
                        Metadata={"sha256": sha256},
                    )
            else:
                self._client.upload_file(
                    str(path),
                    self.bucket,
                    self.key(key),
                    ExtraArgs={"ChecksumAlgorithm": "SHA256", "Metadata": {"sha256": sha256}},
                    Config=self._transfer,
                )
                head = self._client.head_object(
                    Bucket=self.bucket, Key=self.key(key), ChecksumMode="ENABLED"
                )
                got = head.get("ChecksumSHA256")
                if head["ContentLength"] != size or got != expected_checksum(path, size):
                    raise SparsegateError(
                        f"{self.url}/{key}: the stored object does not match {path} "
                        f"({head['ContentLength']} bytes, checksum {got})"
                    )
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"upload {key}", e) from None

    def download(self, key: str, path: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.download_file(self.bucket, self.key(key), str(path))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in {"404", "NoSuchKey"}:
                raise FileNotFoundError(f"{self.url}/{key}") from None
            raise self._fail(f"download {key}", e) from None
        except BotoCoreError as e:
            raise self._fail(f"download {key}", e) from None

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix/`, by its key relative to it, with its size."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self.key(prefix) + "/"
        out: dict[str, int] = {}
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(full) :]] = obj["Size"]
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"list {prefix}", e) from None
        return out

    def folders(self, prefix: str) -> list[str]:
        """The next level of `prefix/` (like a directory listing)."""
        from botocore.exceptions import BotoCoreError, ClientError

        full = self.key(prefix) + "/"
        out: list[str] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/"
            )
            for page in pages:
                for common in page.get("CommonPrefixes", []):
                    out.append(common["Prefix"][len(full) :].rstrip("/"))
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"list {prefix}", e) from None
        return out

    def delete_prefix(self, prefix: str) -> int:
        from botocore.exceptions import BotoCoreError, ClientError

        keys = [self.key(prefix, k) for k in self.sizes(prefix)]
        try:
            for start in range(0, len(keys), 1000):
                batch: Any = [{"Key": k} for k in keys[start : start + 1000]]
                self._client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
        except (BotoCoreError, ClientError) as e:
            raise self._fail(f"delete {prefix}", e) from None
        return len(keys)
