"""API keys: returns the key a bearer token belongs to, from a YAML file that stores only SHA-256 hashes.

    keys:
      - name: lab-bot
        sha256: 5e88…          # of the token; the token itself is shown once, at creation
        access: internal       # public | internal | restricted
        rate_limit_per_minute: 30

The file is named by GUARDEDCHAT_API_KEYS. Without it the API is open (a desktop or a trusted lab
network); with it, every request needs a key, even when the file lists none. A named file that is
missing or unreadable is an error (ConfigError), never an open API.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError, InputError
from .knowledge import AccessLevel

TOKEN_PREFIX = "gc-"


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    sha256: str
    access: AccessLevel = "public"
    rate_limit_per_minute: Optional[int] = Field(default=None, ge=1)



def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ApiKeys:
    """The configured keys; falsy (an open API) only when no key file is set."""

    def __init__(self, keys: list[ApiKey] = (), path: Optional[Path] = None):
        self.keys = list(keys)
        self.path = path

    def __bool__(self) -> bool:
        return self.path is not None or bool(self.keys)

    @classmethod
    def from_env(cls) -> "ApiKeys":
        """The keys of $GUARDEDCHAT_API_KEYS; a file it names must exist (an open API is not a fallback)."""
        path = os.environ.get("GUARDEDCHAT_API_KEYS")
        if not path:
            return cls()
        if not Path(path).is_file():
            raise ConfigError(f"找不到 API 金鑰檔 {path}（GUARDEDCHAT_API_KEYS 指定的檔案），API 不會在沒有金鑰檔時開放，"
                              f"所以伺服器沒有啟動。修正：用 `guardedchat api-key create --name 名稱 --file {path}` "
                              "建立金鑰，或把 GUARDEDCHAT_API_KEYS 改成正確的路徑（不需要金鑰時取消這個設定）。")
        return cls.load(Path(path))

    @classmethod
    def load(cls, path: Path) -> "ApiKeys":
        """The keys in `path`; a file not created yet holds none (`api-key create` starts there)."""
        if not path.exists():
            return cls([], path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            return cls([ApiKey.model_validate(item) for item in data.get("keys") or []], path)
        except (OSError, yaml.YAMLError, UnicodeDecodeError, AttributeError, ValidationError) as exc:
            raise ConfigError(f"無法讀取 API 金鑰檔 {path}（{exc}）。修正：用 `guardedchat api-key create` 重新建立，"
                             "或修正 YAML（keys: 清單，每項有 name、sha256、access）。") from exc

    def lookup(self, token: str) -> Optional[ApiKey]:
        wanted = digest(token)
        found = None
        for key in self.keys:  # compare every key, in constant time each: no early exit to time
            if hmac.compare_digest(key.sha256, wanted):
                found = key
        return found

    def create(self, name: str, access: str = "public", rate_limit_per_minute: Optional[int] = None) -> str:
        """Add a key, save the file, and return the token (the only time it exists in clear)."""
        if any(key.name == name for key in self.keys):
            raise InputError(f"已經有名為 {name!r} 的金鑰。修正：換一個名稱。")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        try:
            self.keys.append(ApiKey(name=name, sha256=digest(token), access=access,
                                    rate_limit_per_minute=rate_limit_per_minute))
        except ValidationError as exc:
            raise InputError(f"金鑰設定不正確：{exc.errors()[0]['msg']}。") from exc
        self.save()
        return token

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        partial.write_text(yaml.safe_dump({"keys": [k.model_dump(exclude_none=True) for k in self.keys]},
                                          allow_unicode=True, sort_keys=False), encoding="utf-8")
        os.chmod(partial, 0o600)
        partial.replace(self.path)
