;; Canary routing: requests with `X-Canary: 1` go to the backends named
;; `canary-*`, all others round-robin over the rest.
;;
;; Written against the canonical ABI of switchyard:policy@0.2.0 by hand.
;; Signatures (core types):
;;   request.header(name_ptr, name_len, ret)            -> ()   ret: option<string>
;;   host.counter(name_ptr, name_len)                   -> handle
;;   host.counter-add(handle, delta: i64)               -> i64 (the value before)
;;   configure(config_ptr, config_len, backends_ptr, backends_len) -> result ptr
;;   select(health_is_some, health_ptr, health_len)     -> result ptr
;; Records in lists: backend = {name: (ptr, len) @0, address: (ptr, len) @8,
;; weight @16, backup: u8 @20, tags: (ptr, len) @24}, 32 bytes;
;; backend-health = {healthy: u8 @0, healthy-since-ns: u64 @8,
;; consecutive-failures @16}, 24 bytes.
;; Memory: 64 configure's result (tag @0, error string @4/@8); 128 select's
;; result (tag @0; ok: backend @4; err: string @4/@8); 256 header()'s return
;; area (tag @0, string @4/@8); 512.. constant strings; 1024.. one canary
;; flag per backend; 2048.. one healthy flag per backend, kept between calls
;; (select gets no list when nothing changed); 4096.. a bump heap that is
;; reset after every call.
(module
  (import "switchyard:policy/request@0.2.0" "header"
    (func $header (param i32 i32 i32)))
  (import "switchyard:policy/host@0.2.0" "counter"
    (func $counter (param i32 i32) (result i32)))
  (import "switchyard:policy/host@0.2.0" "counter-add"
    (func $counter_add (param i32 i64) (result i64)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (global $count (mut i32) (i32.const 0))
  (global $turn_canary (mut i32) (i32.const 0))
  (global $turn_stable (mut i32) (i32.const 0))

  (data (i32.const 512) "x-canary")
  (data (i32.const 520) "canary")
  (data (i32.const 528) "stable")
  (data (i32.const 544) "no backend is named canary-*")
  (data (i32.const 576) "no healthy backend in this group")
  (data (i32.const 608) "this policy takes no policy-config keys")

  ;; Bump allocator for everything the host copies in.
  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.shl (memory.size) (i32.const 16)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.shl (memory.size) (i32.const 16))) (i32.const 16)) (i32.const 1)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (local.get $p))

  ;; Whether the string at ptr/len starts with "canary-".
  (func $is_canary (param $ptr i32) (param $len i32) (result i32)
    (if (i32.lt_u (local.get $len) (i32.const 7)) (then (return (i32.const 0))))
    (i32.and (i32.eq (i32.load (local.get $ptr)) (i32.const 0x616e6163))            ;; "cana"
             (i32.eq (i32.load offset=3 (local.get $ptr)) (i32.const 0x2d797261))))  ;; "ary-"

  (func $refuse (param $ptr i32) (param $len i32) (result i32)
    (i32.store8 (i32.const 64) (i32.const 1))
    (i32.store (i32.const 68) (local.get $ptr))
    (i32.store (i32.const 72) (local.get $len))
    (i32.const 64))

  (func (export "switchyard:policy/selector@0.2.0#configure")
        (param $config i32) (param $config_len i32) (param $backends i32) (param $n i32) (result i32)
    (local $i i32) (local $rec i32) (local $any i32) (local $flag i32)
    (if (local.get $config_len)
      (then (return (call $refuse (i32.const 608) (i32.const 38)))))
    (if (i32.gt_u (local.get $n) (i32.const 1024))
      (then (local.set $n (i32.const 1024))))
    (global.set $count (local.get $n))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.add (local.get $backends) (i32.mul (local.get $i) (i32.const 32))))
        (local.set $flag (call $is_canary (i32.load (local.get $rec)) (i32.load offset=4 (local.get $rec))))
        (i32.store8 (i32.add (i32.const 1024) (local.get $i)) (local.get $flag))
        (local.set $any (i32.or (local.get $any) (local.get $flag)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (i32.eqz (local.get $any))
      (then (return (call $refuse (i32.const 544) (i32.const 28)))))
    (global.set $turn_canary (call $counter (i32.const 520) (i32.const 6)))
    (global.set $turn_stable (call $counter (i32.const 528) (i32.const 6)))
    (i32.store8 (i32.const 64) (i32.const 0))
    (i32.const 64))

  ;; Whether backend i may take a request of this kind.
  (func $eligible (param $i i32) (param $want i32) (result i32)
    (i32.and
      (i32.load8_u (i32.add (i32.const 2048) (local.get $i)))
      (i32.eq (i32.load8_u (i32.add (i32.const 1024) (local.get $i))) (local.get $want))))

  (func (export "switchyard:policy/selector@0.2.0#select")
        (param $changed i32) (param $health i32) (param $len i32) (result i32)
    (local $want i32) (local $i i32) (local $total i32) (local $k i32)
    ;; A new health list: keep its healthy flags.
    (if (local.get $changed)
      (then
        (block $copied
          (loop $next
            (br_if $copied (i32.ge_u (local.get $i) (global.get $count)))
            (i32.store8 (i32.add (i32.const 2048) (local.get $i))
              (if (result i32) (i32.lt_u (local.get $i) (local.get $len))
                (then (i32.load8_u (i32.add (local.get $health) (i32.mul (local.get $i) (i32.const 24)))))
                (else (i32.const 0))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))))
    ;; want = header("x-canary") == "1"
    (call $header (i32.const 512) (i32.const 8) (i32.const 256))
    (if (i32.load8_u (i32.const 256))
      (then
        (local.set $want
          (i32.and (i32.eq (i32.load (i32.const 264)) (i32.const 1))
                   (i32.eq (i32.load8_u (i32.load (i32.const 260))) (i32.const 49))))))
    ;; How many backends of the wanted kind are healthy?
    (local.set $i (i32.const 0))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (global.get $count)))
        (local.set $total (i32.add (local.get $total) (call $eligible (local.get $i) (local.get $want))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (if (i32.eqz (local.get $total))
      (then
        (i32.store8 (i32.const 128) (i32.const 1))
        (i32.store (i32.const 132) (i32.const 576))
        (i32.store (i32.const 136) (i32.const 32))
        (return (i32.const 128))))
    ;; The k-th of them, k from the shared counter.
    (local.set $k
      (i32.wrap_i64
        (i64.rem_u
          (call $counter_add
            (select (global.get $turn_canary) (global.get $turn_stable) (local.get $want))
            (i64.const 1))
          (i64.extend_i32_u (local.get $total)))))
    (local.set $i (i32.const 0))
    (block $found
      (loop $next
        (if (call $eligible (local.get $i) (local.get $want))
          (then
            (br_if $found (i32.eqz (local.get $k)))
            (local.set $k (i32.sub (local.get $k) (i32.const 1)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.store8 (i32.const 128) (i32.const 0))
    (i32.store (i32.const 132) (local.get $i))
    (i32.const 128))

  (func (export "cabi_post_switchyard:policy/selector@0.2.0#configure") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "cabi_post_switchyard:policy/selector@0.2.0#select") (param i32)
    (global.set $heap (i32.const 4096)))
)
