//! What the `kvmkit` binary does: parse the command line, get the VM's configuration (from the
//! command line, a config file, or the API), boot it, and return the exit code for what happened.
//! `main.rs` only calls [`main`].

use std::sync::Arc;

use crate::cli::{self, Action, Invocation, Source};
use crate::config::resources::from_file;
use crate::controller::Controller;
use crate::launch::{Launched, finish};
use crate::outcome::{EXIT_BAD_INPUT, EXIT_GUEST_ERROR};
use crate::timeline::{Event, Format, Timeline};

/// Runs kvmkit with `args` (program name first) and returns the process exit code.
pub fn main<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    crate::logger::init();
    let timeline = Arc::new(Timeline::new());
    // A panic in kvmkit itself (not the guest) still ends with the terminal restored (the panic hook)
    // and a documented exit code; the vCPU threads report their own panics as outcomes.
    std::panic::catch_unwind(|| app(args, timeline)).unwrap_or(EXIT_GUEST_ERROR)
}

fn app(args: Vec<std::ffi::OsString>, timeline: Arc<Timeline>) -> i32 {
    match cli::parse(args) {
        Ok(Action::Print(text)) => {
            print!("{text}");
            0
        }
        Ok(Action::Run(invocation)) => {
            let format = invocation.vm.boot_timeline;
            let code = run(*invocation, timeline.clone());
            timeline.mark(Event::ProcessExit);
            match format {
                Some(Format::Table) => eprint!("{}", timeline.table()),
                Some(Format::Json) => eprintln!("{}", timeline.json()),
                None => {}
            }
            code
        }
        Err(e) => fail(EXIT_BAD_INPUT, &e),
    }
}

fn fail(code: i32, e: &dyn std::fmt::Display) -> i32 {
    eprintln!("kvmkit: error: {}", crate::landlock::explain(e.to_string()));
    code
}

/// Gets the VM started (at once, or when the API says so), serves the API meanwhile if asked, and
/// waits for the VM's end.
fn run(invocation: Invocation, timeline: Arc<Timeline>) -> i32 {
    if let Some(level) = invocation.log_level {
        crate::logger::set_level(level);
    }
    // The config file is read, and the API socket bound, before Landlock: the ruleset needs the
    // file's paths, and binding a socket needs a right on its directory.
    let resources = match &invocation.source {
        Source::ConfigFile(path) => match from_file(path) {
            Ok(r) => Some(r),
            Err(e) => return fail(EXIT_BAD_INPUT, &e),
        },
        _ => None,
    };
    let listener = match &invocation.api_sock {
        Some(path) => match crate::api::server::bind(path) {
            Ok(listener) => Some((listener, path.clone())),
            Err(e) => return fail(EXIT_BAD_INPUT, &e),
        },
        None => None,
    };
    let unbind = |code: i32| {
        if let Some((_, path)) = &listener {
            let _ = std::fs::remove_file(path);
        }
        code
    };
    if let Some(extra) = &invocation.landlock
        && let Err(e) = sandbox(&invocation, resources.as_ref(), extra)
    {
        let code = match e {
            crate::landlock::Error::Path { .. } => EXIT_BAD_INPUT,
            _ => EXIT_GUEST_ERROR,
        };
        return unbind(fail(code, &e));
    }
    crate::seccomp::prepare(invocation.seccomp);
    virtio::on_thread_start(|_name, role| {
        crate::seccomp::apply_or_exit(match role {
            virtio::WorkerRole::HostSockets => crate::seccomp::ThreadKind::Vsock,
            _ => crate::seccomp::ThreadKind::Device,
        })
    });
    let controller = Controller::new(&invocation.id, invocation.vm.clone(), timeline);
    if let (Some(r), Source::ConfigFile(path)) = (resources, &invocation.source)
        && let Err(e) = controller.configure(r)
    {
        return unbind(fail(
            EXIT_BAD_INPUT,
            &format_args!("config file {}: {e}", path.display()),
        ));
    }
    // Signals that come before the VM runs end kvmkit with the socket removed.
    let signals = match crate::signals::StopSignals::new() {
        Ok(s) => s,
        Err(e) => return unbind(fail(EXIT_GUEST_ERROR, &format_args!("signals: {e}"))),
    };
    let server = match listener {
        Some((listener, path)) => match crate::api::serve_on(listener, &path, controller.clone()) {
            Ok(server) => Some(server),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return fail(EXIT_BAD_INPUT, &e);
            }
        },
        None => None,
    };
    let launched: Result<Launched, i32> = match invocation.source {
        Source::CommandLine => controller
            .start_now(Some(&invocation.vm))
            .map_err(|e| start_error(&e)),
        Source::ConfigFile(_) => controller.start_now(None).map_err(|e| start_error(&e)),
        Source::Api => controller.wait_for_start(&signals).map_err(|sig| 128 + sig),
        Source::Restore {
            snapshot,
            memory,
            track_dirty_pages,
        } => controller
            .restore_now(&snapshot, &memory, true, track_dirty_pages)
            .map_err(|e| start_error(&e)),
    };
    drop(signals);
    let code = match launched {
        Ok(launched) => {
            // Every thread the VM needs has started (the API's threads filter themselves).
            crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Main);
            finish(launched)
        }
        Err(code) => code,
    };
    controller.ended();
    drop(server);
    code
}

/// Applies `--landlock`: the paths `invocation` (and its config file's `resources`) names, and the
/// user's `extra` rules.
fn sandbox(
    invocation: &Invocation,
    resources: Option<&crate::config::firecracker::VmResources>,
    extra: &[crate::landlock::Rule],
) -> Result<(), crate::landlock::Error> {
    let mut plan = crate::landlock::Plan::new(extra);
    match (&invocation.source, resources) {
        (Source::CommandLine, _) => plan.vm(&invocation.vm),
        (Source::ConfigFile(_), Some(r)) => plan.resources(r, &invocation.vm),
        (
            Source::Restore {
                snapshot, memory, ..
            },
            _,
        ) => {
            plan.restore(snapshot, memory);
            plan.vm(&invocation.vm);
        }
        _ => plan.vm(&invocation.vm),
    }
    if invocation.api_sock.is_some() {
        plan.api();
    }
    let status = crate::landlock::apply(plan.rules())?;
    log::info!(
        "landlock: {status:?}; kvmkit may open only {}",
        plan.paths()
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Reports a VM that could not start; returns the exit code.
fn start_error(e: &crate::controller::Error) -> i32 {
    match e {
        crate::controller::Error::Launch(l) => fail(l.code, l),
        crate::controller::Error::Restore(l) => fail(l.code, e),
        _ => fail(EXIT_BAD_INPUT, e),
    }
}
