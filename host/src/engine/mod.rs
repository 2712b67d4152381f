//! The wasmtime side: one engine and one pre-instantiated room component for
//! the whole process, and a fresh [`Store`] + instance per project.
//!
//! Every call into a room runs under a CPU budget (epoch interruption: a
//! ticker thread advances the epoch every [`TICK`]; a call that stays in wasm
//! for more ticks than its budget traps) and every store has a memory cap.
//! Between ticks a running call yields to tokio, so a room that loops does
//! not hold a worker thread away from other projects.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::config;
use crate::room::table::Table;
use crate::stacks::Stacks;

/// Interval of the epoch ticker: the granularity of CPU budgets.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// The default room, built from `guest/` by the build script.
pub(crate) static DEFAULT_ROOM: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/default-room.wasm"));

mod exports;

pub(crate) use exports::current::wsroom::room::host as host_bindings;
pub(crate) use exports::current::wsroom::room::types as wit;
pub(crate) use exports::{Batch, EarlierClientInfo, Room, RoomPre};

/// Everything a room's store holds: the project's connection table and
/// alarm (what the host imports act on), WASI and WASI HTTP, and the limits.
pub(crate) struct RoomState {
    pub table: Table,
    pub wasi: WasiCtx,
    pub http: WasiHttpCtx,
    /// Where its outgoing HTTP may go (`crate::outbound`).
    pub http_hooks: crate::outbound::Hooks,
    pub resources: ResourceTable,
    pub limits: StoreLimits,
    /// Epoch ticks the current call has run for.
    pub ticks: u64,
    /// Events the current call carries (several for `on-texts`), each with
    /// a budget of its own.
    pub events: u64,
}

impl WasiView for RoomState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.resources,
        }
    }
}

impl WasiHttpView for RoomState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.resources,
            hooks: &mut self.http_hooks,
        }
    }
}

/// The compiled room components, ready to instantiate, and which project
/// runs which. Replaced as a whole by [`Runtime::reload`].
struct Components {
    /// For projects no mapping matches.
    default: RoomPre,
    /// `(pattern, component)`, first match wins.
    by_project: Vec<(String, RoomPre)>,
}

impl Components {
    fn for_project(&self, project: &str) -> &RoomPre {
        first_match(&self.by_project, project).unwrap_or(&self.default)
    }
}

/// What the first `(pattern, _)` that matches `project` maps it to
/// (`--project-component`: first match wins).
fn first_match<'a, T>(by_project: &'a [(String, T)], project: &str) -> Option<&'a T> {
    by_project
        .iter()
        .find(|(pattern, _)| config::project_matches(pattern, project))
        .map(|(_, value)| value)
}

struct Inner {
    engine: Engine,
    linker: Linker<RoomState>,
    sources: Sources,
    current: RwLock<Arc<Components>>,
    /// Bumped by every successful reload; rooms compare it with the version
    /// their instance was made from.
    version: AtomicU64,
    budget_ticks: u64,
    memory_bytes: usize,
    /// Where rooms' outgoing HTTP may go, and its limits.
    room_http: Arc<crate::outbound::RoomHttp>,
    /// What the engine's fiber stacks come from (shared with it), for tests
    /// to see what it keeps.
    #[cfg(test)]
    stacks: Stacks,
}

/// The engine and the room components; cheap to clone.
#[derive(Clone)]
pub(crate) struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// Compiles the configured components (or the embedded default room) and
    /// checks each against the `room` world.
    pub(crate) fn new(config: &config::Config) -> anyhow::Result<Runtime> {
        let mut wasm_config = Config::new();
        wasm_config.epoch_interruption(true);
        // Fiber stacks freed by dropped instances are kept for new ones.
        let stacks = Stacks::new(crate::stacks::KEEP);
        wasm_config.with_host_stack(Arc::new(stacks.clone()));
        // WSROOM_PERFMAP=1: write /tmp/perf-PID.map so `perf report` names
        // the room's own functions instead of "[JIT]".
        if std::env::var_os("WSROOM_PERFMAP").is_some_and(|v| v == "1") {
            wasm_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if config.compile_cache {
            // Compiled code is kept on disk (by default under
            // ~/.cache/wasmtime), so a restart or a reload of an unchanged
            // component skips compiling it again.
            match wasmtime::Cache::from_file(None) {
                Ok(cache) => {
                    wasm_config.cache(Some(cache));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "no compilation cache; compiling every component at start");
                }
            }
        }
        let engine = Engine::new(&wasm_config)
            .map_err(anyhow::Error::from)
            .context("cannot create the wasmtime engine")?;
        let mut linker = Linker::<RoomState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI")?;
        // A room may import wasi:http/outgoing-handler; where its requests
        // may go is `crate::outbound`'s to say.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI HTTP")?;
        exports::current::Room::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("cannot link the room host interface")?;
        crate::room::imports::add_send(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link the room host interface (send)")?;
        crate::room::compat::add_earlier_hosts(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link the room host interface's earlier versions")?;
        let sources = Sources {
            default: config.component.clone(),
            by_project: config.project_components.clone(),
        };
        let components = sources.load(&engine, &linker)?;
        let inner = Inner {
            engine,
            linker,
            sources,
            current: RwLock::new(Arc::new(components)),
            version: AtomicU64::new(0),
            budget_ticks: (config.cpu_budget.as_millis() / TICK.as_millis()).max(1) as u64,
            memory_bytes: config.room_memory_bytes,
            room_http: Arc::new(config.room_http.clone()),
            #[cfg(test)]
            stacks,
        };
        start_ticker(&inner.engine).context("cannot start the epoch ticker thread")?;
        Ok(Runtime {
            inner: Arc::new(inner),
        })
    }

    /// Compiles every component again from its file. On success, rooms
    /// switch to the new code at their next event; on failure nothing
    /// changes. Returns the new version.
    pub(crate) fn reload(&self) -> anyhow::Result<u64> {
        let inner = &*self.inner;
        let components = inner.sources.load(&inner.engine, &inner.linker)?;
        *self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(components);
        Ok(self.inner.version.fetch_add(1, SeqCst) + 1)
    }

    /// What runs `project`: the file name of its component, or `default`
    /// for the embedded default room (for the console).
    pub(crate) fn component_name(&self, project: &str) -> String {
        let sources = &self.inner.sources;
        let path = first_match(&sources.by_project, project).or(sources.default.as_ref());
        match path {
            Some(path) => path
                .file_name()
                .unwrap_or(path.as_os_str())
                .to_string_lossy()
                .into_owned(),
            None => "default".to_owned(),
        }
    }

    /// The version of the components new instances are made from.
    pub(crate) fn version(&self) -> u64 {
        self.inner.version.load(SeqCst)
    }

    /// A new store and instance for one project, made in the instances'
    /// arena (see `crate::alloc`). On failure the table is handed back.
    pub(crate) async fn instantiate(
        &self,
        table: Table,
    ) -> Result<(Store<RoomState>, Room, u64), (Table, anyhow::Error)> {
        crate::alloc::instance_arena(self.instantiate_here(table)).await
    }

    async fn instantiate_here(
        &self,
        table: Table,
    ) -> Result<(Store<RoomState>, Room, u64), (Table, anyhow::Error)> {
        let inner = &*self.inner;
        // Read the version first: if a reload lands in between, the room
        // sees an older version than its code and switches once more.
        let version = inner.version.load(SeqCst);
        let components = inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let pre = components.for_project(&table.project);
        // What the room prints goes to the host's log, line by line, under
        // a budget (see room::output).
        let (stdout, stderr) = table.output_streams();
        let http_hooks =
            crate::outbound::Hooks::new(inner.room_http.clone(), table.metrics().clone());
        let state = RoomState {
            table,
            wasi: WasiCtxBuilder::new().stdout(stdout).stderr(stderr).build(),
            http: WasiHttpCtx::new(),
            http_hooks,
            resources: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(inner.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            ticks: 0,
            events: 1,
        };
        let mut store = Store::new(&inner.engine, state);
        store.limiter(|s| &mut s.limits);
        let budget = inner.budget_ticks;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.ticks += 1;
            if state.ticks > budget.saturating_mul(state.events) {
                return Err(wasmtime::Error::msg("cpu budget exceeded"));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        match pre.instantiate_async(&mut store).await {
            Ok(room) => Ok((store, room, version)),
            Err(e) => Err((
                store.into_data().table,
                anyhow::Error::from(e).context("cannot instantiate the room"),
            )),
        }
    }
}

/// Where the components come from.
struct Sources {
    /// `None`: the embedded default room.
    default: Option<PathBuf>,
    by_project: Vec<(String, PathBuf)>,
}

impl Sources {
    /// Compiles and checks every configured component.
    fn load(&self, engine: &Engine, linker: &Linker<RoomState>) -> anyhow::Result<Components> {
        let default = match &self.default {
            Some(path) => load_file(engine, linker, path)?,
            None => {
                let component = Component::new(engine, DEFAULT_ROOM)
                    .map_err(anyhow::Error::from)
                    .context("cannot compile the embedded default room")?;
                check(linker, &component, "the default room")?
            }
        };
        let mut by_project = Vec::with_capacity(self.by_project.len());
        for (pattern, path) in &self.by_project {
            by_project.push((pattern.clone(), load_file(engine, linker, path)?));
        }
        Ok(Components {
            default,
            by_project,
        })
    }
}

fn load_file(engine: &Engine, linker: &Linker<RoomState>, path: &Path) -> anyhow::Result<RoomPre> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read room component {}", path.display()))?;
    let component = Component::new(engine, &bytes)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot load room component {}", path.display()))?;
    check(linker, &component, &path.display().to_string())
}

/// Links a component against the host: every import must be provided and
/// every export of the room world present.
fn check(linker: &Linker<RoomState>, component: &Component, what: &str) -> anyhow::Result<RoomPre> {
    let pre = linker
        .instantiate_pre(component)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{what} does not fit the wsroom:room/room world (its imports)"))?;
    RoomPre::new(pre)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("{what} does not fit the wsroom:room/room world (its exports)"))
}

/// Which version of the contract a component was built against: the
/// version of the `wsroom:room/host` interface it imports.
pub(crate) fn contract_version(engine: &Engine, component: &Component) -> String {
    const HOST: &str = "wsroom:room/host@";
    component
        .component_type()
        .imports(engine)
        .find_map(|(name, _)| name.strip_prefix(HOST).map(|v| format!("wsroom:room@{v}")))
        .unwrap_or_else(|| "wsroom:room (it imports no host function)".into())
}

/// Compiles the component in `path` and checks it against the host as
/// `wsroom check` does; the contract version it was built against.
pub(crate) fn check_file(config: &config::Config, path: &Path) -> anyhow::Result<String> {
    let runtime = Runtime::new(&config::Config {
        component: Some(path.to_path_buf()),
        project_components: Vec::new(),
        ..config.clone()
    })?;
    let inner = &*runtime.inner;
    let components = inner
        .current
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let component = components.default.instance_pre().component();
    let version = contract_version(&inner.engine, component);
    Ok(if components.default.takes_batches() {
        format!("{version}, taking text messages in batches")
    } else {
        version
    })
}

/// Advances the engine's epoch every [`TICK`] until the engine is dropped.
fn start_ticker(engine: &Engine) -> std::io::Result<()> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("wsroom-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(TICK);
            }
        })
        .map(drop)
}

/// Prepares a store for one call: a fresh CPU budget.
pub(crate) fn arm(store: &mut Store<RoomState>) {
    arm_for(store, 1);
}

/// Prepares a store for one call that carries `events` events: a budget
/// for each.
pub(crate) fn arm_for(store: &mut Store<RoomState>, events: u64) {
    let state = store.data_mut();
    state.ticks = 0;
    state.events = events.max(1);
    store.set_epoch_deadline(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;
    use std::collections::BTreeMap;

    fn table(runtime_config: &config::Config) -> Table {
        let metrics = Arc::new(crate::metrics::Metrics::default());
        Table::new(
            "p".into(),
            Arc::new(BTreeMap::new()),
            Arc::default(),
            metrics,
            crate::room::storage::Storage::new(runtime_config.room_storage_bytes, None),
            runtime_config.room_log_lines_per_sec,
        )
    }

    #[tokio::test]
    async fn a_dropped_instance_leaves_its_fiber_stack_to_the_next() {
        let config = config::Cli::parse_from(["wsroom", "--no-compile-cache"])
            .config()
            .unwrap();
        let runtime = Runtime::new(&config).unwrap();
        // Instantiating runs on a fiber, so each store takes a stack.
        let (first, _, _) = runtime.instantiate(table(&config)).await.ok().unwrap();
        assert_eq!(runtime.inner.stacks.kept(), 0);
        drop(first);
        assert_eq!(runtime.inner.stacks.kept(), 1, "the stack is kept");
        let (second, _, _) = runtime.instantiate(table(&config)).await.ok().unwrap();
        assert_eq!(runtime.inner.stacks.kept(), 0, "and handed out again");
        drop(second);
    }
}
