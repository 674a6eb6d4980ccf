"""The files of ``--ratelimit-config``: loaded at start, reloaded on SIGHUP and when they change.

Theory of operation. A :class:`ConfigLoader` owns the paths it was given. A
path is a YAML file, or a folder whose ``*.yaml`` and ``*.yml`` files are read
in name order (envoy ratelimit reads every YAML file of its runtime folder).
:meth:`ConfigLoader.load` reads them all and builds one
:class:`~meshlimit.cluster.daemon.rls.yaml_config.RateLimitConfig`; only a
config that loads whole replaces the one in force (:attr:`ConfigLoader.config`),
so a bad edit (its file, line, path and key logged at WARNING) keeps the
rules in force, as envoy ratelimit keeps its last good config. The service
reads :attr:`~ConfigLoader.config` on every request: a reload takes effect at
the next request, without restart, and counts are kept (they belong to the
descriptors' keys, not to the config).

:meth:`ConfigLoader.watch` polls every ``poll_interval_s``: a change of any
file's modification time, size or content hash, or of a folder's list of
YAML files, reloads. The daemon calls :meth:`ConfigLoader.reload` on SIGHUP.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from meshlimit.cluster.daemon.reload import watch_polling
from meshlimit.cluster.daemon.rls.yaml_config import (
    MAX_FILE_BYTES,
    RateLimitConfig,
    RlsConfigError,
    load_config,
)

log = logging.getLogger("meshlimit.envoy")

#: Why 1 s: an edit applies within a second; reading a few small files costs nothing.
POLL_INTERVAL_S = 1.0
#: Most YAML files read from one folder.
MAX_FOLDER_FILES = 1000
_SUFFIXES = (".yaml", ".yml")
Fingerprint = tuple[tuple[str, int, int, str], ...]


class ConfigLoader:
    """Keeps :attr:`config` in step with the files at ``paths``."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        *,
        merge_domains: bool = False,
        poll_interval_s: float = POLL_INTERVAL_S,
        counts: Counter[str] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.merge_domains = merge_domains
        self.poll_interval_s = poll_interval_s
        self.config = RateLimitConfig()
        self.counts: Counter[str] = Counter() if counts is None else counts
        """Loads by result, envoy ratelimit's ``config_load_success`` and ``config_load_error``."""
        self.last_error: str | None = None
        self._fingerprint: Fingerprint | str = ""

    def load(self) -> RateLimitConfig:
        """Read every file now and put the config in force; :class:`RlsConfigError` (and
        the config in force kept) when one cannot be used."""
        try:
            try:
                files, self._fingerprint = self._read()
            except RlsConfigError as error:
                self._fingerprint = str(error)  # polled again only once it changes
                raise
            config = load_config(files, merge_domains=self.merge_domains)
        except RlsConfigError as error:
            self.counts["config_load_error"] += 1
            self.last_error = str(error)
            raise
        self.config = config
        self.counts["config_load_success"] += 1
        self.last_error = None
        for warning in config.warnings:
            log.warning("ratelimit config: %s", warning)
        return config

    def reload(self, reason: str = "sighup") -> bool:
        """:meth:`load`, logging the result; False (the rules in force kept) if bad."""
        try:
            config = self.load()
        except RlsConfigError as error:
            log.warning(
                "ratelimit config reload failed; the rules in force stay",
                extra={
                    "file": error.source,
                    "line": error.line if error.line is not None else "-",
                    "path": error.path or "-",
                    "error": error.problem,
                    "reason": reason,
                },
            )
            return False
        log_loaded(config, reason)
        return True

    def poll(self) -> bool | None:
        """Reload if a file changed since it was last read; None if none did."""
        if self._current_fingerprint() == self._fingerprint:
            return None
        return self.reload("file changed")

    async def watch(self) -> None:
        """:meth:`poll` every ``poll_interval_s`` until cancelled."""
        files = ",".join(str(path) for path in self.paths)
        await watch_polling(self.poll, self.poll_interval_s, "ratelimit config watch failed", files)

    # --- reading ----------------------------------------------------------------------

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                found = sorted(p for p in path.iterdir() if p.suffix in _SUFFIXES and p.is_file())
                if len(found) > MAX_FOLDER_FILES:
                    raise RlsConfigError(
                        str(path), None, "", f"more than {MAX_FOLDER_FILES} YAML files"
                    )
                files += found
            else:
                files.append(path)
        return files

    def _read(self) -> tuple[list[tuple[str, str]], Fingerprint]:
        texts: list[tuple[str, str]] = []
        prints: list[tuple[str, int, int, str]] = []
        for path in self._files():
            try:
                with open(path, "rb") as file:
                    stat = os.fstat(file.fileno())
                    data = file.read(MAX_FILE_BYTES + 1)
            except OSError as error:
                raise RlsConfigError(
                    str(path), None, "", f"cannot read: {error.strerror or error}"
                ) from None
            if len(data) > MAX_FILE_BYTES:
                raise RlsConfigError(str(path), None, "", f"larger than {MAX_FILE_BYTES} bytes")
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise RlsConfigError(str(path), None, "", f"not UTF-8 text: {error}") from None
            texts.append((str(path), text))
            digest = hashlib.sha256(data).hexdigest()
            prints.append((str(path), stat.st_mtime_ns, len(data), digest))
        return texts, tuple(prints)

    def _current_fingerprint(self) -> Fingerprint | str:
        try:
            return self._read()[1]
        except RlsConfigError as error:
            return str(error)


def log_loaded(config: RateLimitConfig, reason: str = "start") -> None:
    """The one line a loaded ratelimit config is logged with: files, domains, rules."""
    log.info(
        "ratelimit config loaded",
        extra={
            "files": len(config.files),
            "domains": ",".join(sorted(config.domains)) or "-",
            "rules": len(config.describe()),
            "reason": reason,
        },
    )
