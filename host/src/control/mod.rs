//! Control: what runs the proxy rather than serves requests. Building a
//! runtime from a config ([`runtime`]), replacing it while traffic flows
//! ([`reload`], driven by signals, [`watch`] and the [`admin`] API),
//! backends looked up in DNS and kept up to date ([`dns`]),
//! [`metrics`], the process limits ([`limits`]), policies pulled from and
//! pushed to OCI registries ([`oci`], [`oci_cache`]), the [`app`] state
//! that outlives configs, and [`serve`], which starts and stops the whole.

pub mod admin;
pub mod app;
pub mod decisions;
pub mod dns;
pub mod limits;
pub mod metrics;
pub mod oci;
pub mod oci_cache;
pub mod reload;
pub mod runtime;
pub mod serve;
pub mod simulate;
pub mod startup_pages;
pub mod watch;
