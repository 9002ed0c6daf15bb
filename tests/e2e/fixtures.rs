//! Hostile policies, written in WAT and made into components in-process
//! (by the same code as `switchyard policy componentize`), so the tests
//! need no Wasm toolchain.
//!
//! Each one behaves on `GET /` (the proxy's dry run before it accepts a
//! policy) and misbehaves on every other path, the way a hostile or buggy
//! policy would slip past a smoke test. The misbehaviours are those the
//! sandbox must contain: an endless loop, unbounded allocation, a trap, an
//! out-of-range answer, an error result. `config_trap` instead traps in its
//! config step, so it can never be loaded.

/// What a fixture does on a path other than `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// `loop { }`
    Loop,
    /// Grows its memory forever.
    Hog,
    /// `unreachable`.
    Trap,
    /// Answers backend index 9999.
    OutOfRange,
    /// Answers an error result.
    Error,
}

impl Hostile {
    pub const ALL: [Hostile; 5] = [
        Hostile::Loop,
        Hostile::Hog,
        Hostile::Trap,
        Hostile::OutOfRange,
        Hostile::Error,
    ];

    /// The failure kind `/metrics` counts it under.
    pub fn kind(self) -> &'static str {
        match self {
            Hostile::Loop => "timeout",
            Hostile::Hog => "memory",
            Hostile::Trap => "trap",
            Hostile::OutOfRange => "out_of_range",
            Hostile::Error => "error",
        }
    }

    fn body(self) -> &'static str {
        match self {
            Hostile::Loop => "(loop $l (br $l)) (unreachable)",
            // Grows by 1 MiB at a time and writes every 4 KiB page of it,
            // so the memory is really resident, not just reserved.
            Hostile::Hog => {
                "(local $p i32) (local $end i32)
                 (loop $l
                   (local.set $p (i32.mul (memory.grow (i32.const 16)) (i32.const 65536)))
                   (local.set $end (i32.add (local.get $p) (i32.const 1048576)))
                   (loop $t
                     (i32.store (local.get $p) (i32.const 1))
                     (local.set $p (i32.add (local.get $p) (i32.const 4096)))
                     (br_if $t (i32.lt_u (local.get $p) (local.get $end))))
                   (br $l))
                 (unreachable)"
            }
            Hostile::Trap => "(unreachable)",
            Hostile::OutOfRange => {
                "(call $drop (local.get $req))
                 (i32.store8 (i32.const 128) (i32.const 0))
                 (i32.store (i32.const 136) (i32.const 9999))
                 (i32.const 128)"
            }
            Hostile::Error => {
                "(call $drop (local.get $req))
                 (i32.store8 (i32.const 128) (i32.const 1))
                 (i32.store (i32.const 136) (i32.const 512))
                 (i32.store (i32.const 140) (i32.const 14))
                 (i32.const 128)"
            }
        }
    }
}

/// A bump allocator for everything the host copies into a fixture's
/// memory, from the global `$heap` (each fixture resets it after a call).
pub const BUMP_REALLOC: &str = r#"(func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
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
    (local.get $p))"#;

/// The core module; `configure` and `hostile` are function bodies.
///
/// Memory map: 64 the `configure` result (zero: ok), 128 the `select`
/// result (`result<decision, string>`: tag at +0, payload at +8), 256 the
/// return area of `request.path`, 512 an error message, 4096+ the bump heap
/// (reset after each call).
fn module(configure: &str, hostile: &str) -> String {
    let realloc = BUMP_REALLOC;
    format!(
        r#"(module
  (import "switchyard:policy/types@0.1.0" "[method]request.path" (func $path (param i32 i32)))
  (import "switchyard:policy/types@0.1.0" "[resource-drop]request" (func $drop (param i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (data (i32.const 512) "policy says no")
  {realloc}
  (func (export "switchyard:policy/selector@0.1.0#configure") (param i32 i32 i32 i32) (result i32)
    {configure})
  (func (export "cabi_post_switchyard:policy/selector@0.1.0#configure") (param i32)
    (global.set $heap (i32.const 4096)))
  (func $hostile (param $req i32) (result i32)
    {hostile})
  (func (export "switchyard:policy/selector@0.1.0#select") (param $req i32) (param i32 i32) (result i32)
    (call $path (local.get $req) (i32.const 256))
    (if (i32.gt_u (i32.load (i32.const 260)) (i32.const 1))
      (then (return (call $hostile (local.get $req)))))
    (call $drop (local.get $req))
    (i32.store8 (i32.const 128) (i32.const 0))
    (i32.store (i32.const 136) (i32.const 0))
    (i32.const 128))
  (func (export "cabi_post_switchyard:policy/selector@0.1.0#select") (param i32)
    (global.set $heap (i32.const 4096)))
)"#
    )
}

fn componentize(wat: &str) -> Vec<u8> {
    switchyard_tools::authoring::componentize(wat.as_bytes()).expect("fixture component")
}

/// A component that misbehaves as `h` on every path but `/`.
pub fn hostile(h: Hostile) -> Vec<u8> {
    componentize(&module("(i32.const 64)", h.body()))
}

/// A component that loops on every path, `/` too, so it never passes the
/// dry run.
pub fn always_loops() -> Vec<u8> {
    let wat = module("(i32.const 64)", Hostile::Loop.body());
    let guard = "(i32.gt_u (i32.load (i32.const 260)) (i32.const 1))";
    assert_eq!(wat.matches(guard).count(), 1);
    componentize(&wat.replace(guard, "(i32.const 1)"))
}

/// A component whose config step traps.
pub fn config_trap() -> Vec<u8> {
    componentize(&module("(unreachable)", "(unreachable)"))
}

/// Random bytes (a fixed pseudo-random sequence), the size of a policy.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// `component` with a custom section appended: a different file (and
/// digest) that behaves exactly the same, "a new version of itself".
pub fn new_version(component: &[u8], tag: &str) -> Vec<u8> {
    let mut out = component.to_vec();
    let name = b"switchyard-test-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    out.push(0); // custom section id
    out.push(payload.len() as u8); // LEB128, payload < 128 bytes
    out.extend_from_slice(&payload);
    out
}

/// A contract 0.2 component that answers backend 0 and misbehaves as `h`
/// in `observe`, which the proxy calls once there are outcomes, so never
/// in the dry run.
pub fn hostile_observer(h: Hostile) -> Vec<u8> {
    let body = h.body();
    let realloc = BUMP_REALLOC;
    componentize(&format!(
        r#"(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  {realloc}
  (func $ok (result i32)
    (i32.store8 (i32.const 64) (i32.const 0))
    (i32.const 64))
  (func (export "switchyard:policy/selector@0.2.0#configure") (param i32 i32 i32 i32) (result i32)
    (call $ok))
  (func (export "cabi_post_switchyard:policy/selector@0.2.0#configure") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "switchyard:policy/selector@0.2.0#select") (param i32 i32 i32) (result i32)
    (i32.store8 (i32.const 128) (i32.const 0))
    (i32.store (i32.const 132) (i32.const 0))
    (i32.const 128))
  (func (export "cabi_post_switchyard:policy/selector@0.2.0#select") (param i32)
    (global.set $heap (i32.const 4096)))
  (func (export "switchyard:policy/observer@0.2.0#observe") (param i32 i32)
    {body})
  (func (export "switchyard:policy/membership@0.2.0#update") (param i32 i32) (result i32)
    (call $ok))
  (func (export "cabi_post_switchyard:policy/membership@0.2.0#update") (param i32)
    (global.set $heap (i32.const 4096)))
)"#
    ))
}
