//! The wasmtime side: one engine and one pre-instantiated room component for
//! the whole process, and a fresh [`Store`] + instance per project.
//!
//! Every call into a room runs under a CPU budget (epoch interruption: a
//! ticker thread advances the epoch every [`TICK`]; a call that stays in wasm
//! for more ticks than its budget traps) and every store has a memory cap.
//! Between ticks a running call yields to tokio, so a room that loops does
//! not hold a worker thread away from other projects.

use std::time::Duration;

use anyhow::Context as _;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::config;
use crate::room::table::Table;

/// Interval of the epoch ticker: the granularity of CPU budgets.
pub const TICK: Duration = Duration::from_millis(10);

/// The default room, built from `guest/` by the build script.
pub static DEFAULT_ROOM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/default-room.wasm"));

mod bindings {
    wasmtime::component::bindgen!({
        world: "room",
        path: "../wit",
        exports: { default: async },
    });
}

pub use bindings::wsroom::room::host as host_bindings;
pub use bindings::wsroom::room::types as wit;
pub use bindings::{Room, RoomPre};

/// Everything a room's store holds: the project's connection table and
/// alarm (what the host imports act on), WASI, and the limits.
pub struct RoomState {
    pub table: Table,
    pub wasi: WasiCtx,
    pub resources: ResourceTable,
    pub limits: StoreLimits,
    /// Epoch ticks the current call has run for.
    pub ticks: u64,
}

impl WasiView for RoomState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.resources,
        }
    }
}

/// The compiled room component, ready to instantiate.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    pre: RoomPre<RoomState>,
    budget_ticks: u64,
    memory_bytes: usize,
}

impl Runtime {
    /// Compiles the configured component (or the embedded default room) and
    /// checks it against the `room` world.
    pub fn new(config: &config::Config) -> anyhow::Result<Runtime> {
        let mut wasm_config = Config::new();
        wasm_config.epoch_interruption(true);
        // WSROOM_PERFMAP=1: write /tmp/perf-PID.map so `perf report` names
        // the room's own functions instead of "[JIT]".
        if std::env::var_os("WSROOM_PERFMAP").is_some_and(|v| v == "1") {
            wasm_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        let engine = Engine::new(&wasm_config)
            .map_err(anyhow::Error::from)
            .context("cannot create the wasmtime engine")?;
        let component = match &config.component {
            Some(path) => Component::from_file(&engine, path)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot load room component {}", path.display()))?,
            None => Component::new(&engine, DEFAULT_ROOM)
                .map_err(anyhow::Error::from)
                .context("cannot compile the embedded default room")?,
        };
        let mut linker = Linker::<RoomState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot link WASI")?;
        Room::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)
            .context("cannot link the room host interface")?;
        let what = config
            .component
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "the default room".into());
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("{what} does not fit the wsroom:room/room world (its imports)")
            })?;
        let pre = RoomPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| {
                format!("{what} does not fit the wsroom:room/room world (its exports)")
            })?;
        start_ticker(&engine).context("cannot start the epoch ticker thread")?;
        Ok(Runtime {
            engine,
            pre,
            budget_ticks: (config.cpu_budget.as_millis() / TICK.as_millis()).max(1) as u64,
            memory_bytes: config.room_memory_bytes,
        })
    }

    /// A new store and instance for one project.
    /// On failure the table is handed back.
    pub async fn instantiate(
        &self,
        table: Table,
    ) -> Result<(Store<RoomState>, Room), (Table, anyhow::Error)> {
        let state = RoomState {
            table,
            wasi: WasiCtxBuilder::new().inherit_stderr().build(),
            resources: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(self.memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            ticks: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        let budget = self.budget_ticks;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.ticks += 1;
            if state.ticks > budget {
                return Err(wasmtime::Error::msg("cpu budget exceeded"));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        match self.pre.instantiate_async(&mut store).await {
            Ok(room) => Ok((store, room)),
            Err(e) => Err((
                store.into_data().table,
                anyhow::Error::from(e).context("cannot instantiate the room"),
            )),
        }
    }
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
pub fn arm(store: &mut Store<RoomState>) {
    store.data_mut().ticks = 0;
    store.set_epoch_deadline(1);
}
