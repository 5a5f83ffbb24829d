;; Attacks memory: grows one page at a time until refused, then aborts like a
;; failed malloc would.
(module
  (memory (export "memory") 1)
  (func (export "bomb")
    (loop
      (br_if 0 (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable))
