"""Deployment profiles: returns the page's settings for desktop, showcase or lab use.

Chosen by GUARDEDCHAT_PROFILE (desktop | showcase | lab), with any field overridden by a YAML file
named in GUARDEDCHAT_SETTINGS (unknown keys are rejected, like domain files).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InputError
from .knowledge import AccessLevel

PROFILES = {
    "desktop": {"show_panel": True, "open_browser": True},
    "showcase": {"show_panel": False, "open_browser": False, "rate_limit_per_minute": 10,
                 "max_message_chars": 500, "max_turns": 20, "queue_size": 16},
    "lab": {"show_panel": True, "open_browser": False, "login_required": True},
}


class PageSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str = "desktop"
    show_panel: bool = True
    open_browser: bool = False
    rate_limit_per_minute: Optional[int] = Field(default=None, ge=1)
    trusted_proxies: list[str] = Field(default_factory=list)  # only these may set x-forwarded-for
    max_message_chars: int = Field(default=4000, ge=1, le=100_000)
    max_turns: Optional[int] = Field(default=None, ge=1)
    queue_size: Optional[int] = Field(default=None, ge=1)
    login_required: bool = False
    users: dict[str, str] = Field(default_factory=dict)      # user name → password
    roles: dict[str, AccessLevel] = Field(default_factory=dict)  # user name → access level (lab)
    access: AccessLevel = "public"  # the level of anyone without a role (and of everyone on a showcase)


    def access_for(self, user: Optional[str]) -> str:
        """The documents this user may see. A showcase serves public documents only, whatever the file says."""
        if self.profile == "showcase":
            return "public"
        return self.roles.get(user, self.access) if user else self.access


def load_settings(profile: Optional[str] = None, path: Optional[Path] = None) -> PageSettings:
    """The profile's defaults, then the settings file, then GUARDEDCHAT_USERS ("name:password,...")."""
    name = profile or os.environ.get("GUARDEDCHAT_PROFILE", "desktop")
    if name not in PROFILES:
        raise InputError(f"不認得的部署設定檔 '{name}'。修正：GUARDEDCHAT_PROFILE 用 {', '.join(PROFILES)} 之一。")
    values = {"profile": name, **PROFILES[name]}
    path = path or (Path(os.environ["GUARDEDCHAT_SETTINGS"]) if os.environ.get("GUARDEDCHAT_SETTINGS") else None)
    if path is not None:
        values.update(_read(path))
    users = os.environ.get("GUARDEDCHAT_USERS", "")
    if users:
        values["users"] = dict(pair.split(":", 1) for pair in users.split(",") if ":" in pair)
    try:
        settings = PageSettings.model_validate(values)
    except ValidationError as exc:
        where = path or "GUARDEDCHAT_PROFILE"
        raise InputError(f"{where}：設定不正確（{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}）。"
                         "修正：對照 README 的部署設定修正。") from exc
    if settings.login_required and not settings.users:
        raise InputError(f"部署設定檔 '{name}' 需要登入，但沒有設定使用者。修正：設定 GUARDEDCHAT_USERS=\"名稱:密碼\" "
                         "或在設定檔加上 users:。")
    return settings


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise InputError(f"無法讀取設定檔 {path}（{exc}）。修正：確認路徑與 YAML 格式。") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}：設定檔最外層必須是鍵值對應。修正：例如 `max_turns: 20`。")
    return data
