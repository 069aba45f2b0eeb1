//! `forward --encrypt`: meshpath plain and under strict WireGuard ([`super::sessions`]), at 64 and
//! 1400 bytes, each as fast as the generator sends.

use super::check::Way;
use super::figures::BySize;
use super::forwarder::{Forwarder, Handler};
use super::traffic::{Phase, Templates};
use super::{run_phase, Bench, FCS, LARGE_FRAME, SMALL_FRAME};

/// What the encrypted comparison measured.
pub(super) struct Encrypted {
    pub mpps: BySize,
    /// Of what reached the sink in the encrypted runs, the share that was WireGuard data.
    pub encrypted_share: f64,
}

/// meshpath plain and under strict WireGuard, at 64 and 1400 bytes, each as fast as the
/// generator sends (one run each).
pub(super) fn measure_encryption(bench: &mut Bench, phase: &Phase) -> anyhow::Result<Encrypted> {
    let way = Way::meshpath(&bench.testbed);
    let small = Templates::new(&bench.testbed, &way, 0, SMALL_FRAME - FCS);
    let large = Templates::new(&bench.testbed, &way, 0, LARGE_FRAME - FCS);
    let mut run = |handler: Handler, templates: &Templates, message: &'static str| {
        bench.bar.set_message(message);
        let forwarder = Forwarder::start(&bench.lab.node, bench.fwd_core, handler)?;
        let measured = run_phase(
            &mut bench.traffic,
            phase,
            templates,
            bench.gen_core,
            &bench.bar,
        );
        forwarder.stop()?;
        bench.bar.inc(1);
        measured
    };
    let plain_64 = run(
        Handler::meshpath(&bench.testbed),
        &small,
        "(c) meshpath, 64 bytes",
    )?;
    let enc_64 = run(
        Handler::meshpath_encrypted(&bench.testbed)?,
        &small,
        "(e) meshpath + WireGuard, 64 bytes",
    )?;
    let plain_1400 = run(
        Handler::meshpath(&bench.testbed),
        &large,
        "(c) meshpath, 1400 bytes",
    )?;
    let enc_1400 = run(
        Handler::meshpath_encrypted(&bench.testbed)?,
        &large,
        "(e) meshpath + WireGuard, 1400 bytes",
    )?;
    let arrived = enc_64.received + enc_64.encrypted + enc_1400.received + enc_1400.encrypted;
    Ok(Encrypted {
        mpps: BySize {
            meshpath_64: plain_64.mpps(),
            meshpath_encrypted_64: enc_64.mpps(),
            meshpath_1400: plain_1400.mpps(),
            meshpath_encrypted_1400: enc_1400.mpps(),
        },
        encrypted_share: (enc_64.encrypted + enc_1400.encrypted) as f64 / arrived.max(1) as f64,
    })
}
