;; Attacks CPU: an exported function that never returns.
(module
  (memory (export "memory") 1)
  (func (export "spin") (loop (br 0))))
