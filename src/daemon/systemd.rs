//! The systemd notify protocol (`Type=notify`), through `sd-notify`. Every call is a no-op
//! when `NOTIFY_SOCKET` is unset, so the daemon runs the same outside systemd.

use sd_notify::NotifyState;
use std::time::Duration;

fn send(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `READY=1`: the startup scan is queued and signal handlers are installed (or a reload ended).
pub fn ready() {
    send(&[NotifyState::Ready]);
}

/// `RELOADING=1` with `MONOTONIC_USEC`, as `Type=notify-reload` expects.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// `WATCHDOG=1`.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `STATUS=...`, shown by `systemctl status`.
pub fn status(text: &str) {
    send(&[NotifyState::Status(text)]);
}

/// How often systemd expects `WATCHDOG=1` (`WatchdogSec=`), if it does.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}
