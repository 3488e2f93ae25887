;; Hostile: grows a core wasm function table without end (Rust cannot emit `table.grow`,
;; so this one step is written by hand in the component text format). The host must stop
;; it at the table-element limit.
(component
  (core module $m
    (memory (export "memory") 1)
    (table $t 1 funcref)
    (global $bump (mut i32) (i32.const 1024))
    ;; run(task-id, step-name, attempt, config) flattened: four strings and a u32.
    (func (export "run") (param i32 i32 i32 i32 i32 i32 i32) (result i32)
      (loop $grow
        (drop (table.grow $t (ref.null func) (i32.const 4096)))
        (br $grow))
      (unreachable))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $at i32)
      (local.set $at (global.get $bump))
      (global.set $bump (i32.add (global.get $bump) (local.get 3)))
      (local.get $at)))
  (core instance $i (instantiate $m))

  (type $step-input' (record
    (field "task-id" string) (field "step-name" string)
    (field "attempt" u32) (field "config" string)))
  (export $step-input "step-input" (type $step-input'))
  (type $error-kind' (enum "retryable" "permanent"))
  (export $error-kind "error-kind" (type $error-kind'))
  (type $step-error' (record
    (field "kind" $error-kind) (field "code" string)
    (field "message" string) (field "retry-after-ms" (option u64))))
  (export $step-error "step-error" (type $step-error'))

  (func $run (param "input" $step-input) (result (result string (error $step-error)))
    (canon lift (core func $i "run") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (export "run" (func $run)))
