//! The limits a policy runs under. Each is the config's if it sets one;
//! else what the component states in its `switchyard-limits` custom
//! section (written by `switchyard policy limits`), capped by
//! `policy-memory-max` / `policy-timeout-max`; else a default sized for
//! the kind of component: one that embeds an interpreter (CPython,
//! SpiderMonkey) gets more.

use std::time::Duration;

use crate::config::SandboxConfig;

/// The custom section a component states its limits in.
pub const SECTION: &str = "switchyard-limits";

/// An interpreted policy's defaults.
const INTERPRETED_MEMORY: u64 = 64 * 1024 * 1024;
const INTERPRETED_TIMEOUT: Duration = Duration::from_millis(10);

/// A component this large embeds an interpreter: compiled policies are
/// tens of kilobytes, CPython and SpiderMonkey ones 10-20 MB.
const INTERPRETER_SIZE: usize = 1 << 20;

/// Whether a component looks like an interpreter with a script inside:
/// it imports WASI (componentize-py's CPython does) or it is large
/// (componentize-js builds without WASI imports, but at ~11 MB).
pub fn interpreted(imports_wasi: bool, size: usize) -> bool {
    imports_wasi || size >= INTERPRETER_SIZE
}

/// What a component says it needs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requested {
    /// Linear memory, bytes.
    pub memory: Option<u64>,
    /// Time per call.
    pub timeout: Option<Duration>,
}

impl Requested {
    /// The last `switchyard-limits` section of a component, if any.
    pub fn of(component: &[u8]) -> Requested {
        let mut last = None;
        for payload in wasmparser::Parser::new(0).parse_all(component).flatten() {
            if let wasmparser::Payload::CustomSection(c) = payload
                && c.name() == SECTION
            {
                last = Some(c.data().to_vec());
            }
        }
        let mut r = Requested::default();
        for line in String::from_utf8_lossy(&last.unwrap_or_default()).lines() {
            match line.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some(("memory", v)) => r.memory = v.parse().ok(),
                Some(("timeout_us", v)) => r.timeout = v.parse().ok().map(Duration::from_micros),
                _ => {}
            }
        }
        r
    }
}

/// Where a limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Written in the config.
    Config,
    /// Stated by the component.
    Component,
    /// Stated by the component, more than the maximum: the maximum.
    Capped,
    /// The default for an interpreted (WASI) policy.
    Interpreted,
    /// The default.
    Default,
}

impl Source {
    /// How `switchyard check` and `/status` say it.
    pub fn describe(self) -> &'static str {
        match self {
            Source::Config => "from the config",
            Source::Component => "asked for by the policy",
            Source::Capped => "the maximum; the policy asked for more",
            Source::Interpreted => "the default for an interpreted policy",
            Source::Default => "the default",
        }
    }
}

/// The limits in force, and where each came from.
#[derive(Debug, Clone, Copy)]
pub struct Effective {
    /// The sandbox, with memory and timeout settled.
    pub sandbox: SandboxConfig,
    /// Where the memory limit came from.
    pub memory_from: Source,
    /// Where the timeout came from.
    pub timeout_from: Source,
}

fn pick<T: Ord + Copy>(
    set: bool,
    config: T,
    asked: Option<T>,
    max: T,
    fallback: Option<T>,
) -> (T, Source) {
    match (set, asked, fallback) {
        (true, _, _) => (config, Source::Config),
        (false, Some(a), _) if a > max => (max, Source::Capped),
        (false, Some(a), _) => (a, Source::Component),
        (false, None, Some(f)) => (f.min(max), Source::Interpreted),
        (false, None, None) => (config, Source::Default),
    }
}

/// The limits for a component that asked for `requested`.
pub fn effective(config: SandboxConfig, requested: Requested, interpreted: bool) -> Effective {
    let (memory, memory_from) = pick(
        config.memory_set,
        config.memory,
        requested.memory,
        config.memory_max,
        interpreted.then_some(INTERPRETED_MEMORY),
    );
    let (timeout, timeout_from) = pick(
        config.timeout_set,
        config.timeout,
        requested.timeout,
        config.timeout_max,
        interpreted.then_some(INTERPRETED_TIMEOUT),
    );
    Effective {
        sandbox: SandboxConfig {
            memory,
            timeout,
            ..config
        },
        memory_from,
        timeout_from,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_tools_write_is_what_the_proxy_reads() {
        assert_eq!(SECTION, switchyard_tools::authoring::LIMITS_SECTION);
        // The empty component: magic, version 0x0d, layer 1.
        let component = b"\0asm\x0d\0\x01\0".to_vec();
        let first = switchyard_tools::authoring::set_limits(
            &component,
            Some(64 << 20),
            Some(Duration::from_millis(10)),
        )
        .unwrap();
        assert_eq!(
            Requested::of(&first),
            Requested {
                memory: Some(64 << 20),
                timeout: Some(Duration::from_millis(10)),
            }
        );
        // A later statement replaces the earlier one as a whole.
        let second = switchyard_tools::authoring::set_limits(&first, Some(8 << 20), None).unwrap();
        assert_eq!(
            Requested::of(&second),
            Requested {
                memory: Some(8 << 20),
                timeout: None,
            }
        );
        assert_eq!(Requested::of(&component), Requested::default());
    }

    #[test]
    fn interpreters_are_told_by_wasi_or_size() {
        assert!(!interpreted(false, 23_000));
        assert!(interpreted(true, 23_000));
        assert!(interpreted(false, 11_500_000));
    }

    #[test]
    fn the_config_wins_then_the_component_capped_then_the_kind() {
        let base = SandboxConfig::default();
        let asked = Requested {
            memory: Some(64 << 20),
            timeout: Some(Duration::from_millis(5)),
        };
        let e = effective(base, asked, true);
        assert_eq!(
            (e.sandbox.memory, e.memory_from),
            (64 << 20, Source::Component)
        );
        assert_eq!(e.sandbox.timeout, Duration::from_millis(5));
        let greedy = Requested {
            memory: Some(1 << 40),
            timeout: None,
        };
        let e = effective(base, greedy, false);
        assert_eq!(
            (e.sandbox.memory, e.memory_from),
            (base.memory_max, Source::Capped)
        );
        assert_eq!(e.timeout_from, Source::Default);
        let e = effective(base, Requested::default(), true);
        assert_eq!(
            (e.sandbox.memory, e.memory_from),
            (64 << 20, Source::Interpreted)
        );
        let set = SandboxConfig {
            memory: 8 << 20,
            memory_set: true,
            ..base
        };
        let e = effective(set, asked, true);
        assert_eq!((e.sandbox.memory, e.memory_from), (8 << 20, Source::Config));
    }
}
