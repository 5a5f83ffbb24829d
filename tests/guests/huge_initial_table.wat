;; Attacks the table budget before any code runs: declares a table of a million elements.
(module
  (memory (export "memory") 1)
  (table (export "table") 1000000 funcref))
