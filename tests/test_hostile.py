"""The hostile-guest catalogue, run against a host while two well-behaved tenants generate
with a real model: each attacker gets its own specific error, the others' outputs are
exactly what they are without the attacker, and the host survives with bounded RSS.

Attackers are tenants' own modules speaking the guest ABI: the attack sits in their
start function, their borda_invoke, their response, their declarations or their imports.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest
import wasmtime
from click.testing import CliRunner

import borda
from borda import Host, Quota
from borda.cli import main

ATTACKER = Quota(memory_per_session="32M", call_timeout=0.5, request_timeout=1.0)
PROMPT = "the quick brown fox jumps over a lazy dog"
EBADF = 8


def wat_bytes(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def abi_module(
    invoke: str, *, pages: int = 1, imports: str = "", extra: str = "", table: str = ""
) -> bytes:
    """A guest-ABI module whose borda_invoke body is `invoke`."""
    return bytes(
        wasmtime.wat2wasm(f"""
        (module
          {imports}
          (memory (export "memory") {pages})
          {table}
          (global $top (mut i32) (i32.const 1024))
          {extra}
          (func (export "borda_abi_version") (result i32) (i32.const 1))
          (func (export "borda_alloc") (param $n i32) (result i32)
            (local $p i32)
            (local.set $p (global.get $top))
            (global.set $top (i32.add (global.get $top) (local.get $n)))
            (local.get $p))
          (func (export "borda_invoke") (param $req i32) (param $len i32) (result i64)
            {invoke}))""")
    )


def response_at(ptr: int, nbytes: int) -> str:
    return f"(i64.or (i64.shl (i64.const {ptr}) (i64.const 32)) (i64.const {nbytes}))"


def answer(result: dict[str, int]) -> tuple[bytes, dict[str, int]]:
    """A static msgpack response, and where each (one-byte) result value sits in it."""
    marks = {key: 0x50 + i for i, key in enumerate(result)}
    packed = msgpack.packb({"ok": True, "result": marks})
    return packed, {key: packed.index(bytes([mark])) for key, mark in marks.items()}


def returns_tensor_named(name: str) -> bytes:
    """A guest whose response carries one 1-float tensor called `name`."""
    tensor = {"dtype": "f32", "shape": [1], "data": bytes(4)}
    response = msgpack.packb({"ok": True, "result": {}, "tensors": {name: tensor}})
    return abi_module(
        response_at(256, len(response)), extra=f'(data (i32.const 256) "{wat_bytes(response)}")'
    )


def wasi_open(path: str) -> bytes:
    """path_open(fd 3, path): the first preopened directory, if there were one."""
    response, at = answer({"errno": 0})
    return abi_module(
        imports="""(import "wasi_snapshot_preview1" "path_open" (func $open
            (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))""",
        extra=f"""(data (i32.const 64) "{wat_bytes(path.encode())}")
                  (data (i32.const 256) "{wat_bytes(response)}")""",
        invoke=f"""
            (i32.store8 (i32.const {256 + at["errno"]})
              (call $open (i32.const 3) (i32.const 1) (i32.const 64) (i32.const {len(path)})
                          (i32.const 0) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0)
                          (i32.const 512)))
            {response_at(256, len(response))}""",
    )


def wasi_environ() -> bytes:
    response, at = answer({"env": 0, "args": 0})
    sizes = "(param i32 i32) (result i32)"
    return abi_module(
        imports=f"""(import "wasi_snapshot_preview1" "environ_sizes_get" (func $env {sizes}))
                    (import "wasi_snapshot_preview1" "args_sizes_get" (func $args {sizes}))""",
        extra=f'(data (i32.const 256) "{wat_bytes(response)}")',
        invoke=f"""
            (drop (call $env (i32.const 512) (i32.const 516)))
            (drop (call $args (i32.const 520) (i32.const 524)))
            (i32.store8 (i32.const {256 + at["env"]}) (i32.load (i32.const 512)))
            (i32.store8 (i32.const {256 + at["args"]}) (i32.load (i32.const 520)))
            {response_at(256, len(response))}""",
    )


@dataclass(frozen=True)
class Attack:
    """A module, and what it must end in: an error (matching `match`), or for attacks
    whose guest survives them, the result it sees."""

    wasm: bytes
    error: type[borda.BordaError] | None = None
    match: str = ""
    at_registration: bool = False
    result: dict[str, int] = field(default_factory=dict)


ZERO = "(i64.const 0)"
NESTING = "(memory.fill (i32.const 8192) (i32.const 0x91) (i32.const 50000))" + response_at(
    8192, 50000
)  # 50000 one-element arrays, each inside the last
CATALOGUE = {
    "infinite loop in an export": Attack(
        abi_module(f"(loop (br 0)) {ZERO}"), borda.SandboxTimeout, r"call_timeout=0\.5 s"
    ),
    "infinite loop in the start function": Attack(
        abi_module(ZERO, extra="(func $forever (loop (br 0))) (start $forever)"),
        borda.SandboxTimeout,
        "instantiation",
        at_registration=True,
    ),
    "memory.grow bomb": Attack(
        abi_module(
            "(loop (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1)))) unreachable"
        ),
        borda.SandboxMemoryLimit,
        r"memory_per_session=32\.0 MiB",
    ),
    "oversized initial memory": Attack(
        abi_module(ZERO, pages=32768),
        borda.SandboxMemoryLimit,
        "2048.0 MiB of initial memory",
        at_registration=True,
    ),
    "oversized data segment": Attack(
        abi_module(ZERO, pages=1024, extra=f'(data (i32.const {(64 << 20) - 8}) "overflow")'),
        borda.SandboxMemoryLimit,
        "64.0 MiB of initial memory",
        at_registration=True,
    ),
    "table growth": Attack(
        abi_module(
            "(loop (br_if 0 (i32.ne (table.grow $t (ref.null func) (i32.const 1000))"
            " (i32.const -1)))) unreachable",
            table='(table $t (export "table") 1 funcref)',
        ),
        borda.SandboxMemoryLimit,
        "table",
    ),
    "deep recursion": Attack(
        abi_module(
            f"(drop (call $down (i32.const 0))) {ZERO}",
            extra="(func $down (param i32) (result i32)"
            " (i32.add (call $down (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))",
        ),
        borda.GuestTrap,
        "stack",
    ),
    "out-of-bounds load": Attack(
        abi_module(f"(drop (i32.load (i32.const 0x7fff0000))) {ZERO}"),
        borda.GuestTrap,
        "memory_out_of_bounds",
    ),
    "out-of-bounds store": Attack(
        abi_module(f"(i32.store (i32.const 65536) (i32.const 42)) {ZERO}"),
        borda.GuestTrap,
        "memory_out_of_bounds",
    ),
    "response pointer outside memory": Attack(
        abi_module(response_at(60000, 1 << 20)), borda.GuestABIError, "outside its 65536-byte"
    ),
    "response over the size cap": Attack(
        abi_module(response_at(0, 128 << 20)), borda.GuestABIError, "over the 67108864-byte cap"
    ),
    "msgpack bomb: deep nesting": Attack(
        abi_module(NESTING),
        borda.GuestABIError,
        "msgpack",
    ),
    "msgpack bomb: huge declared array": Attack(
        abi_module(response_at(16, 5), extra='(data (i32.const 16) "\\dd\\ff\\ff\\ff\\ff")'),
        borda.GuestABIError,
        "msgpack",
    ),
    "msgpack bomb: huge declared bin": Attack(
        abi_module(response_at(16, 8), extra='(data (i32.const 16) "\\c6\\ff\\ff\\ff\\f0abc")'),
        borda.GuestABIError,
        "msgpack",
    ),
    # `borda run --output-dir` saves each output as NAME.npy
    "tensor name with a path in it": Attack(
        returns_tensor_named("../../escape"), borda.GuestABIError, "tensor named '../../escape'"
    ),
    # no preopened directory exists, so there is no fd to open anything relative to
    "WASI: absolute-path open": Attack(wasi_open("/etc/passwd"), result={"errno": EBADF}),
    "WASI: '..' open": Attack(wasi_open("../../../etc/passwd"), result={"errno": EBADF}),
    "WASI: reading the environment": Attack(wasi_environ(), result={"env": 0, "args": 0}),
    "unknown import": Attack(
        abi_module(
            ZERO,
            imports='(import "wasi_snapshot_preview1" "proc_exit" (func (param i32)))'
            ' (import "env" "exfiltrate" (func (param i32 i32)))',
        ),
        borda.GuestABIError,
        r"env\.exfiltrate",
        at_registration=True,
    ),
}


class Bystanders:
    """Two tenants generating greedily, over and over, until stopped."""

    def __init__(self, host: Host, expected: list[int], prompt_ids: list[int]) -> None:
        self.host, self.expected, self.prompt_ids = host, expected, prompt_ids
        self.outputs: list[list[int]] = []
        self.finished_at: list[float] = []  # when each output came
        self.attacks: list[tuple[float, float]] = []  # when each attack ran
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._generate, args=(f"bystander-{i}",)) for i in range(2)
        ]
        for thread in self._threads:
            thread.start()

    def _generate(self, tenant: str) -> None:
        self.host.add_tenant(tenant)
        session = self.host.session(tenant, "llama")
        while not self._stop.is_set():
            try:
                request = session.generate_ids(self.prompt_ids, len(self.expected), None, False)
                self.outputs.append(request.result(timeout=60))
                self.finished_at.append(time.monotonic())
            except BaseException as exc:  # reported by the last test
                self.errors.append(exc)
                return

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def busy_host(host_model: Path) -> Iterator[tuple[Host, Bystanders, int]]:
    reference = borda.load(host_model).session(max_context=512)
    assert isinstance(reference, borda.Session)
    prompt_ids = list(reference.model.tokenizer.encode(PROMPT).ids)
    expected = list(reference.generate_ids(prompt_ids, 48, stop_at_eos=False))
    with Host(workers=2, stats_file=host_model.parent / "hostile-stats.json") as host:
        host.add_model("llama", host_model)
        bystanders = Bystanders(host, expected, prompt_ids)
        yield host, bystanders, rss_bytes()
        bystanders.stop()


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_attack_gets_its_own_error(name: str, busy_host: tuple[Host, Bystanders, int]) -> None:
    host, bystanders, _ = busy_host
    attack = CATALOGUE[name]
    tenant = f"attacker {name}"
    host.add_tenant(tenant, ATTACKER)
    before, start = len(bystanders.outputs), time.monotonic()
    if attack.error is None:
        host.add_module(tenant, "evil", attack.wasm)
        assert host.invoke(tenant, "evil", "attack") == attack.result
    elif attack.at_registration:
        with pytest.raises(attack.error, match=attack.match) as info:
            host.add_module(tenant, "evil", attack.wasm)
        assert repr(tenant) in str(info.value)
    else:
        host.add_module(tenant, "evil", attack.wasm)
        with pytest.raises(attack.error, match=attack.match) as info:
            host.invoke(tenant, "evil", "attack")
        assert repr(tenant) in str(info.value)
    bystanders.attacks.append((start, time.monotonic()))
    assert not bystanders.errors
    assert len(bystanders.outputs) >= before  # they keep going


def test_bystanders_were_untouched_and_the_host_survived(
    busy_host: tuple[Host, Bystanders, int],
) -> None:
    host, bystanders, rss_before = busy_host
    while len(bystanders.outputs) < 4 and not bystanders.errors:
        threading.Event().wait(0.05)
    assert not bystanders.errors, bystanders.errors
    assert bystanders.outputs and all(out == bystanders.expected for out in bystanders.outputs)
    first, last = bystanders.attacks[0][0], bystanders.attacks[-1][1]
    during = [t for t in bystanders.finished_at if first <= t <= last]
    assert len(during) >= 4, "the bystanders did not generate while the attacks ran"
    assert rss_bytes() - rss_before < 200 << 20
    errors = {
        name: t["errors"] for name, t in host.stats()["tenants"].items() if name.startswith("att")
    }
    assert sum(sum(kinds.values()) for kinds in errors.values()) >= 10


def test_cli_saves_no_output_under_a_name_with_a_path(tmp_path: Path) -> None:
    module = tmp_path / "evil.wasm"
    module.write_bytes(returns_tensor_named("../escape"))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["run", str(module), "--fn", "f", "--output-dir", str(out)])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "tensor named '../escape'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.wasm"]
