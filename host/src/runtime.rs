//! A configuration brought to life: upstream groups with their policies
//! loaded, and the router. Building one compiles and configures every
//! policy, which is exactly what `switchyard check` verifies.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{Config, ConfigError, PolicySource};
use crate::policy::{Compiled, PolicyEngine, StateRegistry, WasmPolicy};
use crate::router::Router;
use crate::upstream::Upstream;

/// [`Runtime`] is everything the request path needs from one config.
pub struct Runtime {
    /// The checked config it was built from.
    pub config: Config,
    /// Upstream groups, in the config's order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Request → upstream index.
    pub router: Router,
}

impl Runtime {
    /// Loads every upstream's policy (compiling each distinct source once)
    /// and builds the groups. Returns every problem found, each located at
    /// the `policy = ...` line it concerns.
    pub fn build(
        config: Config,
        engine: &PolicyEngine,
        registry: &StateRegistry,
    ) -> Result<Runtime, Vec<ConfigError>> {
        let mut compiled: HashMap<PolicySource, Compiled> = HashMap::new();
        let mut errors = Vec::new();
        let mut upstreams = Vec::new();
        for up in &config.upstreams {
            let at = |e: &dyn std::fmt::Display| {
                up.policy_origin
                    .error(format!("upstreams.{}.policy: {e}", up.name))
            };
            let component = match compiled.get(&up.policy) {
                Some(c) => c.clone(),
                None => match engine.compile(&up.policy) {
                    Ok(c) => {
                        compiled.insert(up.policy.clone(), c.clone());
                        c
                    }
                    Err(e) => {
                        errors.push(at(&e));
                        continue;
                    }
                },
            };
            match WasmPolicy::load(
                component,
                &up.name,
                &up.policy_config,
                &up.backends,
                registry.get(&up.name),
            ) {
                Ok(policy) => upstreams.push(Arc::new(Upstream::new(up.clone(), Arc::new(policy)))),
                Err(e) => errors.push(at(&e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Runtime {
            router: Router::new(config.routes.clone()),
            config,
            upstreams,
        })
    }
}
