;; Attacks the host's msgpack decoder: borda_invoke answers with a response nested
;; 100000 levels deep, or with a header declaring a 4 GiB string/bin/map/array in a
;; few bytes. set_attack picks which.
(module
  (memory (export "memory") 4)
  (global $top (mut i32) (i32.const 1024))
  (global $attack (mut i32) (i32.const 0))
  ;; 1: str32, 2: bin32, 3: map32, 4: array32, each of length 0xffffffff, then "ab"
  (data (i32.const 16) "\db\ff\ff\ff\ffab")
  (data (i32.const 32) "\c6\ff\ff\ff\ffab")
  (data (i32.const 48) "\df\ff\ff\ff\ffab")
  (data (i32.const 64) "\dd\ff\ff\ff\ffab")
  (func (export "borda_abi_version") (result i32) (i32.const 1))
  (func (export "borda_alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))
  (func (export "set_attack") (param i32) (global.set $attack (local.get 0)))
  (func (export "borda_invoke") (param i32 i32) (result i64)
    (if (i32.eqz (global.get $attack))
      (then
        ;; 100000 x fixarray(1) at 65536, closed by nil: 100001 bytes
        (memory.fill (i32.const 65536) (i32.const 0x91) (i32.const 100000))
        (i32.store8 (i32.const 165536) (i32.const 0xc0))
        (return (i64.or (i64.shl (i64.const 65536) (i64.const 32)) (i64.const 100001)))))
    (i64.or
      (i64.shl (i64.extend_i32_u (i32.mul (global.get $attack) (i32.const 16))) (i64.const 32))
      (i64.const 7))))
