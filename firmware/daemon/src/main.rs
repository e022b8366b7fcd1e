//! `branchgate`: the box's one daemon and its command line.

mod devices;
mod health;
mod logging;
mod memory;
mod supervisor;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use branchgate_config::{
    ApplyOptions, Config, ConfigStore, Confirm, HashedSecret, Redaction, SecretState, config_from_value,
    parse_document, write_atomically,
};
use branchgate_web_admin::logs::LogRing;
use branchgate_web_admin::status::ServiceBoard;
use branchgate_web_admin::{AppState, now_ms, rfc3339};
use clap::{Parser, Subcommand};
use rand::Rng;
use tokio::sync::watch;

use crate::supervisor::Supervisor;

/// The firmware version this build reports (and compares bundles against): set at build time
/// with `BRANCHGATE_FIRMWARE_VERSION`, else the crate version; `run --firmware-version` overrides.
const FIRMWARE_VERSION: &str = match option_env!("BRANCHGATE_FIRMWARE_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// The file the first start writes the admin password to.
const INITIAL_PASSWORD_FILE: &str = "initial-admin-password";

#[derive(Parser)]
#[command(name = "branchgate", version, about = "Branch-office WebRTC/SIP gateway daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the box.
    Run {
        /// Where configuration and state live.
        #[arg(long, default_value = "/var/lib/branchgate")]
        data_dir: PathBuf,
        /// Provisioning file (a configuration document), applied once on first start.
        #[arg(long)]
        provision: Option<PathBuf>,
        /// The `compatible` string firmware bundles must carry.
        #[arg(long, default_value = branchgate_update::DEFAULT_COMPATIBLE)]
        compatible: String,
        /// The vendor CA certificate(s) bundles must be signed under [default: DATA_DIR/firmware/keyring.pem].
        #[arg(long)]
        firmware_keyring: Option<PathBuf>,
        /// The firmware version of the running slot (what bundles are compared against).
        #[arg(long, default_value = FIRMWARE_VERSION)]
        firmware_version: String,
        /// Seconds after start within which a newly booted slot must prove healthy (admin UI
        /// answers, services running) to be marked good; otherwise the box reboots and the
        /// bootloader falls back to the other slot. Only with RAUC's D-Bus service.
        #[arg(long, default_value_t = 60)]
        boot_health_deadline: u64,
        /// Where inserted USB media are mounted, searched for bundles (repeatable)
        /// [default: /media, /run/media, /mnt].
        #[arg(long = "usb-root")]
        usb_roots: Vec<PathBuf>,
        /// Mount the partitions of USB sticks read-only under /run/branchgate/usb before each
        /// search (for a box without an automounter; needs root).
        #[arg(long)]
        usb_automount: bool,
        #[command(flatten)]
        devices: DeviceOptions,
    },
    /// Device checks (used by the VM test against real kernel drivers).
    #[command(hide = true)]
    Hal {
        #[command(subcommand)]
        command: HalCommand,
    },
    /// Firmware bundles (RAUC verity format).
    Bundle {
        #[command(subcommand)]
        command: BundleCommand,
    },
    /// Work with configuration documents.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// The TURN server's users and credentials.
    Turn {
        #[command(subcommand)]
        command: TurnCommand,
    },
}

/// The box's devices for `run`.
#[derive(clap::Args)]
struct DeviceOptions {
    /// A kernel watchdog device to pet while the services are healthy (e.g. /dev/watchdog).
    /// Opt-in: opening one arms it, and a developer's machine must not be reset by a stopped test.
    #[arg(long)]
    watchdog_device: Option<PathBuf>,
    /// The timeout to ask of that device, in seconds.
    #[arg(long, default_value_t = 30)]
    watchdog_timeout: u64,
    /// The status LED's GPIO line: CHIP:OFFSET or a line name [default: the line named status-led, if any].
    #[arg(long)]
    led_line: Option<String>,
    /// The reset button's GPIO line (active low) [default: the line named reset-button, if any].
    #[arg(long)]
    button_line: Option<String>,
}

#[derive(Subcommand)]
enum HalCommand {
    /// Enumerate and exercise the devices; prints a JSON report, exits 1 if a check failed.
    Selftest {
        /// Accepted for clarity: the report is always JSON.
        #[arg(long)]
        json: bool,
        /// ALSA playback device for the tone round trip (e.g. hw:Loopback,0,0).
        #[arg(long)]
        audio_playback: Option<String>,
        /// ALSA capture device that hears it (e.g. hw:Loopback,1,0).
        #[arg(long)]
        audio_capture: Option<String>,
        #[arg(long, default_value_t = 1000.0)]
        tone_hz: f64,
        #[arg(long, default_value_t = 1000)]
        tone_ms: u64,
        /// A card whose playback volume and mute are set, read back and restored (e.g. Dummy).
        #[arg(long)]
        mixer_card: Option<String>,
        /// Frames to capture from each V4L2 camera.
        #[arg(long, default_value_t = 3)]
        camera_frames: u32,
        /// Seconds of each camera's encoded H.264 stream to watch through its pipeline (0: none).
        #[arg(long, default_value_t = 0)]
        camera_encode_secs: u64,
        /// The size wished for in that encode check (the device's nearest is taken).
        #[arg(long, default_value_t = 640)]
        camera_encode_width: u32,
        #[arg(long, default_value_t = 360)]
        camera_encode_height: u32,
        /// Half-way through the encode check, reconfigure to this size ("WIDTHxHEIGHT"):
        /// the pipeline restarts and the same viewer must keep receiving.
        #[arg(long, value_parser = parse_size)]
        camera_restart_size: Option<(u32, u32)>,
        /// Take a JPEG snapshot of each real camera from its encoded stream (at the encode size).
        #[arg(long)]
        camera_snapshot: bool,
        /// A watchdog device to open and pet.
        #[arg(long)]
        watchdog: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        watchdog_timeout: u64,
        #[arg(long, default_value_t = 3)]
        pets: u32,
        /// Exit without the magic close: the watchdog then resets the machine.
        #[arg(long)]
        leave_armed: bool,
    },
}

#[derive(Subcommand)]
enum BundleCommand {
    /// Make a signed bundle holding a rootfs image (needs mksquashfs from squashfs-tools).
    Create {
        /// The signing certificate (PEM), issued under the box's keyring CA.
        #[arg(long)]
        cert: PathBuf,
        /// Its private key (PEM; ECDSA P-256 or RSA).
        #[arg(long)]
        key: PathBuf,
        /// Intermediate certificates to embed (PEM), if the signer is not issued by the CA itself.
        #[arg(long)]
        intermediate: Vec<PathBuf>,
        /// The firmware version (dotted numbers, optional -suffix).
        #[arg(long)]
        version: String,
        /// The rootfs image for the inactive slot.
        #[arg(long)]
        rootfs: PathBuf,
        /// The boxes the bundle is for.
        #[arg(long, default_value = branchgate_update::DEFAULT_COMPATIBLE)]
        compatible: String,
        /// A build identifier (e.g. a date or commit).
        #[arg(long)]
        build: Option<String>,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Check a bundle's signature and payload; prints its manifest.
    Verify {
        /// The CA certificate(s) the signature must chain to (PEM).
        #[arg(long)]
        keyring: PathBuf,
        /// Also require this `compatible` string.
        #[arg(long)]
        compatible: Option<String>,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum TurnCommand {
    /// A TURN REST credential (coturn `use-auth-secret` style) for an app server to hand to a browser.
    Credential {
        #[arg(long, default_value = "/var/lib/branchgate")]
        data_dir: PathBuf,
        /// The user part of the username (`expiry:user`).
        #[arg(long)]
        user: String,
        /// Seconds the credential stays valid.
        #[arg(long, default_value_t = 86400)]
        ttl: u64,
    },
    /// TURN users with long-term credentials.
    User {
        #[command(subcommand)]
        command: TurnUserCommand,
    },
}

#[derive(Subcommand)]
enum TurnUserCommand {
    /// List the users.
    List {
        #[arg(long, default_value = "/var/lib/branchgate")]
        data_dir: PathBuf,
    },
    /// Add a user, or set the password of an existing one.
    Add {
        #[arg(long, default_value = "/var/lib/branchgate")]
        data_dir: PathBuf,
        username: String,
        /// The password (stored only as its long-term key).
        #[arg(long)]
        password: String,
    },
    /// Delete a user.
    Del {
        #[arg(long, default_value = "/var/lib/branchgate")]
        data_dir: PathBuf,
        username: String,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a provisioning or backup file without applying it.
    Validate { file: PathBuf },
    /// Print the stored configuration as a document (the daemon must be stopped).
    Export {
        #[arg(long, default_value = "/var/lib/branchgate")]
        data_dir: PathBuf,
        /// Include plain-text secrets (trunk passwords, TURN secret, TLS key).
        #[arg(long)]
        include_secrets: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            data_dir,
            provision,
            compatible,
            firmware_keyring,
            firmware_version,
            boot_health_deadline,
            usb_roots,
            usb_automount,
            devices,
        } => run(
            data_dir,
            provision,
            FirmwareOptions {
                compatible,
                keyring: firmware_keyring,
                version: firmware_version,
                health_deadline: Duration::from_secs(boot_health_deadline),
                usb_roots,
                usb_automount,
            },
            devices,
        ),
        Command::Hal { command } => hal_command(command),
        Command::Bundle { command } => bundle_command(command),
        Command::Config { command: ConfigCommand::Validate { file } } => validate(&file),
        Command::Turn { command } => turn_command(command),
        Command::Config { command: ConfigCommand::Export { data_dir, include_secrets } } => {
            let store = ConfigStore::open(&data_dir, now_ms()).context("opening the configuration")?;
            let redaction = if include_secrets { Redaction::None } else { Redaction::PlainSecrets };
            let doc = store.export(redaction, &rfc3339(now_ms()));
            println!("{}", serde_json::to_string_pretty(&doc)?);
            Ok(())
        }
    }
}

fn hal_command(command: HalCommand) -> anyhow::Result<()> {
    match command {
        HalCommand::Selftest {
            json: _,
            audio_playback,
            audio_capture,
            tone_hz,
            tone_ms,
            mixer_card,
            camera_frames,
            camera_encode_secs,
            camera_encode_width,
            camera_encode_height,
            camera_restart_size,
            camera_snapshot,
            watchdog,
            watchdog_timeout,
            pets,
            leave_armed,
        } => {
            let report = devices::selftest(&devices::SelftestOptions {
                playback: audio_playback,
                capture: audio_capture,
                tone_hz,
                tone_ms,
                mixer_card,
                camera_frames,
                camera_encode_secs,
                camera_encode_size: (camera_encode_width, camera_encode_height),
                camera_restart_size,
                camera_snapshot,
                watchdog,
                watchdog_timeout,
                pets,
                leave_armed,
            });
            println!("{}", serde_json::to_string_pretty(&report)?);
            if report["ok"] != serde_json::Value::Bool(true) {
                bail!("hal selftest: {} check(s) failed", report["errors"].as_array().map_or(0, Vec::len));
            }
            Ok(())
        }
    }
}

fn bundle_command(command: BundleCommand) -> anyhow::Result<()> {
    match command {
        BundleCommand::Create { cert, key, intermediate, version, rootfs, compatible, build, output } => {
            let manifest = branchgate_update::create(&branchgate_update::CreateOptions {
                cert,
                key,
                intermediates: intermediate,
                compatible,
                version,
                build,
                rootfs,
                output: output.clone(),
            })?;
            println!("{}: bundle created\n{}", output.display(), manifest.summary());
            Ok(())
        }
        BundleCommand::Verify { keyring, compatible, file } => {
            let keyring = branchgate_update::Keyring::load(&keyring)?;
            let manifest =
                branchgate_update::verify(&file, &keyring).with_context(|| format!("{}: refused", file.display()))?;
            if let Some(system) = compatible
                && manifest.compatible != system
            {
                bail!("{}: refused: the bundle is for '{}', not '{system}'", file.display(), manifest.compatible);
            }
            println!(
                "{}: valid (signature chains to {}, payload matches the signed verity root hash)\n{}",
                file.display(),
                keyring.path.display(),
                manifest.summary()
            );
            Ok(())
        }
    }
}

fn turn_command(command: TurnCommand) -> anyhow::Result<()> {
    match command {
        TurnCommand::Credential { data_dir, user, ttl } => {
            let config = branchgate_config::read_last_known_good(&data_dir)?;
            let Some(secret) = config.turn.auth_secret else {
                bail!("turn.auth_secret is not set: set it under TURN settings first");
            };
            let now = now_ms() / 1000;
            let (username, password) =
                branchgate_turn::auth::rest_credential(secret.expose().as_bytes(), &user, now, ttl);
            let out = serde_json::json!({
                "username": username,
                "credential": password,
                "ttl": ttl,
                "realm": config.turn.realm,
                "uris": [
                    format!("turn:{{host}}:{}?transport=udp", config.turn.udp_port),
                    format!("turn:{{host}}:{}?transport=tcp", config.turn.tcp_port),
                    format!("turns:{{host}}:{}?transport=tcp", config.turn.tls_port),
                ],
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        TurnCommand::User { command: TurnUserCommand::List { data_dir } } => {
            let config = branchgate_config::read_last_known_good(&data_dir)?;
            for user in &config.turn.users {
                println!("{}", user.username);
            }
            Ok(())
        }
        TurnCommand::User { command: TurnUserCommand::Add { data_dir, username, password } } => {
            change_turn_users(&data_dir, &format!("TURN user {username} set"), |users| {
                users.retain(|u| u.username != username);
                users.push(branchgate_config::TurnUser {
                    username: username.clone(),
                    password: HashedSecret::new(&password),
                });
                Ok(())
            })
        }
        TurnCommand::User { command: TurnUserCommand::Del { data_dir, username } } => {
            change_turn_users(&data_dir, &format!("TURN user {username} deleted"), |users| {
                let before = users.len();
                users.retain(|u| u.username != username);
                if users.len() == before {
                    bail!("no TURN user named '{username}'");
                }
                Ok(())
            })
        }
    }
}

/// Changes `turn.users` through the store (the daemon must be stopped: it
/// holds the store; with it running, use the web UI or `PUT /api/v1/config/turn`).
fn change_turn_users(
    data_dir: &Path,
    comment: &str,
    change: impl FnOnce(&mut Vec<branchgate_config::TurnUser>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let store = match ConfigStore::open(data_dir, now_ms()) {
        Ok(store) => store,
        Err(e @ branchgate_config::ConfigError::Locked(_)) => {
            bail!("{e}: while it runs, change TURN users in the web UI or with PUT /api/v1/config/turn")
        }
        Err(e) => return Err(e.into()),
    };
    let mut config = store.current().config.clone();
    change(&mut config.turn.users)?;
    store
        .apply(config, ApplyOptions::new("cli", comment).confirm(Confirm::Never), now_ms())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!("{comment}");
    Ok(())
}

fn validate(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let mut config = parse_document(&bytes)?;
    let provided_admin_password = config.admin.password.state() != SecretState::Keep;
    if !provided_admin_password {
        config.admin.password = HashedSecret::new("placeholder-for-validation");
    }
    let mut errors = config.seal(&Config::default());
    errors.extend(config.validate());
    if errors.is_empty() {
        println!("{}: valid", file.display());
        Ok(())
    } else {
        for e in &errors {
            eprintln!("{}: {}", e.path, e.message);
        }
        bail!("{}: {} problem(s)", file.display(), errors.len())
    }
}

/// A password for the first login: 20 characters from an alphabet without
/// look-alikes, so it can be read off a console and typed.
fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char).collect()
}

/// First start: the provisioning file or defaults, with a per-unit admin password.
fn first_start(store: &ConfigStore, data_dir: &Path, provision: Option<&Path>) -> anyhow::Result<Option<String>> {
    let (mut config, author) = match provision {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading the provisioning file {}", path.display()))?;
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("provisioning file {}: not valid JSON", path.display()))?;
            // Zero-touch: the provisioning file is the setup, so no wizard afterwards,
            // unless the file asks for it with `system.setup_complete: false`.
            let explicit = doc.pointer("/system/setup_complete").and_then(serde_json::Value::as_bool);
            let mut config = config_from_value(doc).with_context(|| format!("provisioning file {}", path.display()))?;
            config.system.setup_complete = explicit.unwrap_or(true);
            (config, "provision")
        }
        None => (Config::default(), "system"),
    };
    let mut initial_password = None;
    if config.admin.password.state() == SecretState::Keep {
        let password = generate_password();
        config.admin.password = HashedSecret::new(&password);
        config.admin.must_change_password = true;
        let path = data_dir.join(INITIAL_PASSWORD_FILE);
        write_atomically(&path, format!("{password}\n").as_bytes(), 0o600)
            .with_context(|| format!("writing {}", path.display()))?;
        initial_password = Some(password);
    } else {
        // The provisioning file chose the password: no forced change.
        config.admin.must_change_password = false;
    }
    let comment = if provision.is_some() { "provisioned on first start" } else { "initial configuration" };
    store
        .apply(config, ApplyOptions::new(author, comment).confirm(Confirm::Never), now_ms())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("the first configuration was refused")?;
    if provision.is_some() {
        store.mark_provisioned()?;
    }
    Ok(initial_password)
}

/// How the daemon checks firmware bundles.
struct FirmwareOptions {
    compatible: String,
    keyring: Option<PathBuf>,
    version: String,
    health_deadline: Duration,
    usb_roots: Vec<PathBuf>,
    usb_automount: bool,
}

fn run(
    data_dir: PathBuf,
    provision: Option<PathBuf>,
    firmware: FirmwareOptions,
    devices: DeviceOptions,
) -> anyhow::Result<()> {
    let started = Instant::now();
    memory::tune_allocator();
    let ring = LogRing::new(2000);
    logging::init(ring.clone());
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let store = Arc::new(ConfigStore::open(&data_dir, now_ms()).context("opening the configuration store")?);
    if let Some(done) = store.factory_reset() {
        tracing::warn!(
            by = %done.request.by,
            keep_config = done.request.keep_config,
            removed = ?done.removed,
            "factory reset carried out"
        );
    }
    if let Some(notice) = store.recovery_notice() {
        tracing::error!("{notice}");
    }
    let initial_password = if store.is_empty() {
        first_start(&store, &data_dir, provision.as_deref())?
    } else {
        if let Some(path) = &provision {
            tracing::info!(file = %path.display(), "data directory already configured; the provisioning file is applied on first start only");
        }
        None
    };
    if let Err(e) = store.expire_pending(now_ms()) {
        tracing::error!(error = %e, "cannot roll back an unconfirmed change");
    }

    // The box's certificate exists before the services that present it start.
    if let Err(e) = branchgate_web_admin::tls::box_certificate(&store.current().config, &data_dir) {
        tracing::error!(error = %e, "cannot prepare the box's TLS certificate");
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("branchgate")
        .build()
        .context("starting the runtime")?;
    let exit = runtime.block_on(serve(store, ring, data_dir, initial_password, started, firmware, devices))?;
    // Whatever a task still holds goes before the process is replaced.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match exit {
        Exit::Stopped => Ok(()),
        Exit::Restart { reboot_machine: true } => {
            branchgate_update::restart_machine().map_err(|e| anyhow::anyhow!("restarting the machine: {e}"))
        }
        Exit::Restart { reboot_machine: false } => restart_daemon(),
    }
}

/// How `serve` ended.
enum Exit {
    /// SIGTERM/SIGINT: the process ends.
    Stopped,
    /// Asked to start again (factory reset): the machine reboots on a real box (RAUC), the
    /// daemon replaces itself elsewhere (same PID, same arguments).
    Restart { reboot_machine: bool },
}

/// Replaces the process with a fresh start of the same binary and arguments; returns only on
/// failure. Files are opened close-on-exec, so the data directory lock is released.
fn restart_daemon() -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding the daemon's binary")?;
    println!("branchgate: restarting");
    let error = std::process::Command::new(&exe).args(std::env::args_os().skip(1)).exec();
    Err(anyhow::anyhow!("restarting {}: {error}", exe.display()))
}

async fn serve(
    store: Arc<ConfigStore>,
    ring: LogRing,
    data_dir: PathBuf,
    initial_password: Option<String>,
    started: Instant,
    firmware: FirmwareOptions,
    device_options: DeviceOptions,
) -> anyhow::Result<Exit> {
    let board = ServiceBoard::default();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut state = AppState::new(store.clone(), board.clone(), ring, data_dir.clone());
    state.firmware.compatible = firmware.compatible;
    if let Some(keyring) = firmware.keyring {
        state.firmware.keyring = keyring;
    }
    state.firmware.running_version = firmware.version.clone();
    if !firmware.usb_roots.is_empty() {
        state.firmware.usb = branchgate_update::usb::UsbWatcher::new(firmware.usb_roots.clone());
    }
    if firmware.usb_automount {
        let mount_dir = PathBuf::from(branchgate_update::usb::AUTOMOUNT_DIR);
        state.firmware.usb = state.firmware.usb.clone().with_automount(mount_dir);
    }
    // RAUC's D-Bus service where there is one (the box); simulated slots elsewhere. Without a
    // system bus, or with a bus but no RAUC, the answer comes at once; the timeout only covers a
    // slow box (software emulation under load).
    let rauc = match tokio::time::timeout(
        Duration::from_secs(10),
        branchgate_update::RaucSlots::connect(firmware.version.clone()),
    )
    .await
    {
        Ok(Ok(rauc)) => Some(Arc::new(rauc)),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "no RAUC service");
            None
        }
        Err(_) => None,
    };
    if let Some(rauc) = &rauc {
        state.firmware.backend = rauc.clone();
        tracing::info!(
            version = %firmware.version,
            compatible = %state.firmware.compatible,
            keyring = %state.firmware.keyring.display(),
            "firmware updates: RAUC (D-Bus)"
        );
    } else {
        state.firmware.backend = Arc::new(branchgate_update::SimulatedSlots::new(
            branchgate_web_admin::firmware::firmware_dir(&data_dir),
            firmware.version.clone(),
        ));
        tracing::info!(
            version = %firmware.version,
            compatible = %state.firmware.compatible,
            keyring = %state.firmware.keyring.display(),
            "firmware updates: simulated A/B slots in {}",
            data_dir.join("firmware").display()
        );
    }
    // An install the machine did not live through (power loss): reported as failed, once.
    if let Some(message) = state.firmware.recover_interrupted(&branchgate_web_admin::firmware::firmware_dir(&data_dir))
    {
        tracing::warn!("firmware: {message}");
    }
    record_start_in_history(&state, &store, &firmware.version).await;
    let mut supervisor = Supervisor::new(board.clone(), shutdown_rx.clone());

    let (ready_tx, mut ready_rx) = watch::channel(None::<SocketAddr>);

    // The status LED shows booting from here on; the reset button is polled.
    let pins = devices::open_pins(
        &devices::GpioLines { led: device_options.led_line.clone(), button: device_options.button_line.clone() },
        &state.devices,
    );
    {
        let services = board.clone();
        let ready = ready_rx.clone();
        let tracker = state.firmware.tracker.clone();
        let reset_state = state.clone();
        supervisor.spawn_task(devices::gpio_loop(
            pins,
            state.devices.clone(),
            move || {
                // The button means a box as new: the configuration goes too. Not in the middle
                // of an install (the reboot would cut it); off the async threads (it syncs).
                if reset_state.firmware.tracker.busy() {
                    tracing::warn!(
                        "factory reset by the button refused: an install is running; try again when it is done"
                    );
                    return;
                }
                let state = reset_state.clone();
                tokio::task::spawn_blocking(move || {
                    let request = branchgate_config::FactoryReset {
                        keep_config: false,
                        by: "reset-button".into(),
                        requested_ms: now_ms(),
                    };
                    match branchgate_config::request_factory_reset(&state.data_dir, &request) {
                        Ok(()) => state.restart.notify_one(),
                        Err(e) => tracing::error!(error = %e, "cannot record the factory reset"),
                    }
                });
            },
            {
                let state = state.clone();
                move || {
                    let state = state.clone();
                    tokio::task::spawn_blocking(move || install_from_usb_by_button(&state));
                }
            },
            move || {
                let updating = tracker.busy();
                devices::pattern_for(ready.borrow().is_some(), &services, updating)
            },
            supervisor.shutdown(),
        ));
    }
    let ready_tx = Arc::new(ready_tx);
    {
        let state = state.clone();
        supervisor.spawn("admin-ui", move |shutdown| {
            let state = state.clone();
            let ready_tx = ready_tx.clone();
            async move {
                branchgate_web_admin::run(state, shutdown, move |addr| {
                    ready_tx.send_replace(Some(addr));
                })
                .await
                .map_err(anyhow::Error::from)
            }
        });
    }
    {
        let store = store.clone();
        supervisor.spawn("config-guard", move |mut shutdown| {
            let store = store.clone();
            async move {
                // Rolls back unconfirmed risky changes when their deadline passes.
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => return Ok(()),
                    }
                    if let Some(outcome) = store.expire_pending(now_ms())? {
                        tracing::warn!(revision = outcome.revision, "unconfirmed change rolled back");
                    }
                }
            }
        });
    }

    // TURN over TLS and SIP over TLS present the box's own certificate (the admin UI's).
    let certificates: branchgate_streams::CertificateSource = {
        let certificate_store = store.clone();
        let certificate_dir = data_dir.clone();
        Arc::new(move || {
            branchgate_web_admin::tls::box_certificate(&certificate_store.current().config, &certificate_dir)
                .map(|pair| (pair.certificate, pair.private_key))
                .map_err(|e| e.to_string())
        })
    };
    {
        let store = store.clone();
        let certificates = certificates.clone();
        let monitor = state.turn.clone();
        supervisor.spawn("turn", move |shutdown| {
            let config_rx = store.subscribe();
            let certificates = certificates.clone();
            let monitor = monitor.clone();
            async move {
                branchgate_turn_relay::run(config_rx, shutdown, certificates, monitor)
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }

    {
        let store = store.clone();
        let hub = state.whep.hub.clone();
        supervisor.spawn("cameras", move |shutdown| {
            let config_rx = store.subscribe();
            let hub = hub.clone();
            async move { branchgate_capture::follow_config(config_rx, shutdown, hub).await.map_err(anyhow::Error::from) }
        });
    }

    {
        let store = store.clone();
        let hub = state.whep.hub.clone();
        supervisor.spawn("rtsp", move |shutdown| {
            let config_rx = store.subscribe();
            let hub = hub.clone();
            async move {
                let cameras: branchgate_capture::rtsp_server::CameraSource = Arc::new(branchgate_capture::cameras);
                branchgate_capture::rtsp_server::run(config_rx, shutdown, hub, cameras)
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }

    {
        let store = store.clone();
        let hub = state.whep.hub.clone();
        let root = data_dir.join(branchgate_capture::recording::RECORDINGS_DIR);
        supervisor.spawn("recording", move |shutdown| {
            let config_rx = store.subscribe();
            let (hub, root) = (hub.clone(), root.clone());
            async move {
                let cameras: branchgate_capture::rtsp_server::CameraSource = Arc::new(branchgate_capture::cameras);
                branchgate_capture::recording::run(config_rx, shutdown, hub, cameras, root)
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }

    {
        let store = store.clone();
        let monitor = state.sip.clone();
        let data_dir = data_dir.clone();
        let certificates = certificates.clone();
        supervisor.spawn("sip", move |shutdown| {
            let config_rx = store.subscribe();
            let monitor = monitor.clone();
            let data_dir = data_dir.clone();
            let certificates = certificates.clone();
            async move {
                branchgate_gateway::run(config_rx, shutdown, monitor, data_dir, certificates)
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }

    {
        // Fleet rollouts: idle until `update.hawkbit_url` is set.
        let store = store.clone();
        let agent = state.firmware.clone();
        let dir = branchgate_web_admin::firmware::firmware_dir(&data_dir);
        supervisor.spawn("hawkbit", move |shutdown| {
            let config_rx = store.subscribe();
            let (agent, dir) = (agent.clone(), dir.clone());
            async move {
                branchgate_update::hawkbit::run(config_rx, shutdown, agent, dir).await.map_err(anyhow::Error::from)
            }
        });
    }

    // Announce readiness once the admin UI listens.
    let _ = ready_rx.wait_for(Option::is_some).await;
    let addr = (*ready_rx.borrow()).unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
    let shown_host = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
    let url = format!("https://{shown_host}:{}/", addr.port());
    // One write, so that whoever watches for the ready line also gets the login line.
    let mut banner =
        format!("branchgate: admin UI ready at {url} ({} ms after start)\n", started.elapsed().as_millis());
    let password_file = data_dir.join(INITIAL_PASSWORD_FILE);
    match &initial_password {
        Some(password) => banner.push_str(&format!(
            "branchgate: first login: user admin, password {password} (also in {})\n",
            password_file.display()
        )),
        None if password_file.exists() => banner
            .push_str(&format!("branchgate: first-login password (until changed) is in {}\n", password_file.display())),
        None => {}
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes());
    let _ = out.flush();
    drop(out);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status("running")]);
    // The watchdogs are petted from here on, while the services are healthy.
    let mut watchdogs = branchgate_hal::watchdog::select(None, Duration::ZERO).unwrap_or_default();
    if let Some(path) = &device_options.watchdog_device {
        match branchgate_hal::watchdog::DeviceWatchdog::open(path, Duration::from_secs(device_options.watchdog_timeout))
        {
            Ok(dog) => {
                watchdogs.retain(|d| !d.info().simulated);
                watchdogs.insert(0, Box::new(dog));
            }
            Err(e) => tracing::error!(error = %e, "watchdog device unavailable"),
        }
    }
    for dog in &watchdogs {
        let info = dog.info();
        tracing::info!(kind = ?info.kind, device = ?info.device, timeout_seconds = ?info.timeout_seconds, "watchdog");
    }
    supervisor.spawn_task(devices::health_loop(watchdogs, board.clone(), state.devices.clone(), supervisor.shutdown()));
    // A slot booted for the first time proves itself before it is marked good.
    if rauc.is_some() {
        let check = health::boot_health_check(
            state.firmware.clone(),
            board.clone(),
            ready_rx.clone(),
            firmware.health_deadline,
            started,
        );
        let mut shutdown = supervisor.shutdown();
        supervisor.spawn_task(async move {
            tokio::select! {
                _ = check => {}
                _ = shutdown.changed() => {}
            }
        });
    }

    let restart = tokio::select! {
        _ = wait_for_signal() => false,
        _ = state.restart.notified() => true,
    };
    tracing::info!(restart, "shutting down");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    let _ = shutdown_tx.send(true);
    supervisor.join(Duration::from_secs(5)).await;
    Ok(if restart { Exit::Restart { reboot_machine: rauc.is_some() } } else { Exit::Stopped })
}

/// The update history learns of this start: a factory reset it carried out, the slot and
/// version it runs, a fallback of the bootloader since the last start.
async fn record_start_in_history(state: &AppState, store: &ConfigStore, running_version: &str) {
    let agent = state.firmware.clone();
    let reset = store.factory_reset().cloned();
    let running_version = running_version.to_string();
    let recorded = tokio::task::spawn_blocking(move || {
        if let Some(done) = reset {
            let what = if done.request.keep_config { "configuration kept" } else { "configuration wiped" };
            let message = format!("factory reset ({what}; removed: {})", done.removed.join(", "));
            agent.record(
                branchgate_update::HistoryEntry::now(branchgate_update::HistoryEvent::FactoryReset, message)
                    .by(done.request.by),
            );
        }
        let status = agent.backend.status().map_err(|e| e.to_string())?;
        agent.history.observe_boot(&status, &running_version).map_err(|e| e.to_string())
    })
    .await;
    match recorded {
        Ok(Ok(added)) => {
            for entry in added.iter().filter(|e| e.event == branchgate_update::HistoryEvent::Fallback) {
                tracing::error!("firmware: {}", entry.message);
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot record this start in the update history"),
        Err(e) => tracing::warn!(error = %e, "cannot record this start in the update history"),
    }
}

/// A short press of the reset button installs the one installable bundle on the inserted
/// USB media (the LED blinks "updating" while it runs); anything else is only logged.
fn install_from_usb_by_button(state: &AppState) {
    let agent = &state.firmware;
    let allow_downgrade = state.store.current().config.update.allow_downgrade;
    let bundles = agent.usb.list(agent, allow_downgrade);
    let Some(chosen) = branchgate_update::usb::button_choice(&bundles) else {
        let installable = bundles.iter().filter(|b| b.refused.is_none()).count();
        tracing::info!(found = bundles.len(), installable, "reset button pressed: no single USB bundle to install");
        return;
    };
    let dir = branchgate_web_admin::firmware::firmware_dir(&state.data_dir);
    match agent.usb.install(agent, &chosen.path, &dir, allow_downgrade, "reset-button") {
        Ok(manifest) => {
            tracing::warn!(version = %manifest.version, path = %chosen.path, "reset button: installing the USB bundle")
        }
        Err(e) => tracing::error!(error = %e, path = %chosen.path, "reset button: the USB bundle was not installed"),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers; running until killed");
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// `WIDTHxHEIGHT`, as `--camera-restart-size` takes it.
fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text.split_once('x').ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT"))?;
    Ok((w.parse().map_err(|e| format!("width: {e}"))?, h.parse().map_err(|e| format!("height: {e}"))?))
}
