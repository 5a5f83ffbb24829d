;; A well-behaved ABI guest: borda_invoke answers {"ok": true, "result": {"n": 7}}
;; from a static msgpack buffer.
(module
  (memory (export "memory") 1)
  (global $top (mut i32) (i32.const 1024))
  ;; 0x82 map(2): "ok" -> true, "result" -> {"n": 7}
  (data (i32.const 16) "\82\a2ok\c3\a6result\81\a1n\07")
  (func (export "borda_abi_version") (result i32) (i32.const 1))
  (func (export "borda_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))
  (func (export "borda_invoke") (param i32 i32) (result i64)
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const 16))))
