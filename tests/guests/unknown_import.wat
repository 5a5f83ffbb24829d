;; Attacks the import policy: asks for a host function of its own choosing next to a
;; legitimate WASI import.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func (param i32 i32 i32 i32) (result i32)))
  (import "env" "exfiltrate" (func (param i32 i32)))
  (memory (export "memory") 1))
