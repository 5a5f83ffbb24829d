;; Attacks the table budget: grows a funcref table $step elements at a time until
;; refused, then aborts like a failed allocation would.
(module
  (memory (export "memory") 1)
  (table $t (export "table") 1 funcref)
  (func (export "bomb") (param $step i32)
    (loop
      (br_if 0 (i32.ne (table.grow $t (ref.null func) (local.get $step)) (i32.const -1))))
    unreachable))
