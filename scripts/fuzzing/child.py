"""The fuzzing child: one target under atheris (libFuzzer), which takes the process
over; every input that makes the oracle raise is recorded as a finding, once per
distinct signature, and the campaign goes on."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from pathlib import Path

from fuzzing.common import CHILD_ADDRESS_SPACE_BYTES, MAX_LEN, signature
from fuzzing.mutator import Mutator
from fuzzing.oracles import harness_for
from fuzzing.seeds import DICTIONARY


class Recorder:
    """Writes each distinct finding once, with the input; counts recurrences."""

    def __init__(self, findings: Path) -> None:
        self.dir = findings
        self.counts: dict[str, int] = {}
        self.written_at = 0.0

    def record(self, data: bytes, error: BaseException) -> None:
        sig = signature(error)
        key = hashlib.sha1(sig.encode()).hexdigest()[:12]
        first = key not in self.counts
        self.counts[key] = self.counts.get(key, 0) + 1
        if first:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / f"{key}.bin").write_bytes(data)
            text = "".join(traceback.format_exception(error))
            (self.dir / f"{key}.txt").write_text(
                f"signature: {sig}\ninput ({len(data)} bytes, hex): {data.hex()}\n\n{text}"
            )
            print(f"\n==== FINDING {key}: {sig}\n{text}", file=sys.stderr, flush=True)
        if first or time.monotonic() - self.written_at > 5:
            self.written_at = time.monotonic()
            (self.dir.parent / "finding_counts.json").write_text(json.dumps(self.counts))


def run_child(target: str, corpus: Path, work: Path, seconds: int) -> None:
    import resource

    import atheris

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE_BYTES, CHILD_ADDRESS_SPACE_BYTES))

    with atheris.instrument_imports(include=["meshlimit"]):
        import meshlimit.cluster.daemon.http_api
        import meshlimit.cluster.daemon.resp
        import meshlimit.cluster.node
        import meshlimit.cluster.wire.auth
        import meshlimit.cluster.wire.codec
        import meshlimit.core.rules  # noqa: F401
    import meshlimit.cluster.wire.codec as codec

    decoders = codec._decoders(codec.DEFAULT_LIMITS)  # generated code: instrument it too
    for function in [decoders.sender, decoders.sender_addr, *decoders.by_tag.values()]:
        atheris.instrument_func(function)
    harness = harness_for(target)
    recorder = Recorder(work / "findings")
    recorder.counts = (
        json.loads((work / "finding_counts.json").read_text())
        if (work / "finding_counts.json").exists()
        else {}
    )

    def one_input(data: bytes) -> None:
        try:
            harness(data)
        except Exception as error:  # every escape is a finding; MemoryError included
            recorder.record(data, error)

    args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        "-print_final_stats=1",
        f"-max_len={MAX_LEN[target]}",
        f"-artifact_prefix={work}/",
        "-timeout=5",
        "-rss_limit_mb=8192",
        "-close_fd_mask=0",
    ]
    if target in DICTIONARY:
        args.append(f"-dict={work / 'dictionary.txt'}")
    mutator = None
    if target in ("codec", "node"):
        mutator = Mutator([p.read_bytes() for p in sorted(corpus.iterdir())[:200]])
    atheris.Setup(args, one_input, custom_mutator=mutator)
    atheris.Fuzz()
