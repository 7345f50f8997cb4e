#!/usr/bin/env bash
# Provision and run ONE real single-node Apache Cassandra 5.0 for switchboard's tests.
#
#   cassandra.sh install                 resolve cassandra-all + deps from Maven Central into the
#                                        jar cache (idempotent; a no-op when already there)
#   cassandra.sh start DATA_DIR [PORT]   start a node on 127.0.0.1:PORT (default 9042) with all its
#                                        state under DATA_DIR; returns once the port answers CQL
#   cassandra.sh stop DATA_DIR           SIGTERM, then SIGKILL after a bounded wait
#   cassandra.sh status [DATA_DIR]       jar cache state; with DATA_DIR: running / ready or not
#   cassandra.sh kill DATA_DIR           SIGKILL at once (for crash tests), removes the pid file
#   cassandra.sh classpath               print the classpath (after install)
#
# No container, no tarball: the jars come through `mvn` (pom.xml beside this file), the config is
# cassandra.yaml + logback.xml beside this file, rendered per DATA_DIR into DATA_DIR/conf.
#
# Environment (all optional):
#   SWITCHBOARD_CACHE         cache root (default $HOME/.cache/switchboard)
#   CASSANDRA_LIB_DIR         jar directory (default $SWITCHBOARD_CACHE/cassandra-<version>/lib)
#   JAVA                      java binary (default: java on PATH; Java 17 or 11)
#   CASSANDRA_HEAP            -Xmx (default 1g)
#   CASSANDRA_HEAP_MIN        -Xms (default 128m: the heap grows on demand, keeping RSS low)
#   CASSANDRA_CDS             1 (default): keep a class-data-sharing archive next to the jars
#                             (written when the first node stops cleanly, used by later starts,
#                             ~25% less start CPU); 0: do not write or use it
#   CASSANDRA_STORAGE_PORT    inter-node port, bound on 127.0.0.1 only (default 7000)
#   CASSANDRA_COMMITLOG_SYNC  batch (default: acked writes survive kill -9) or periodic (faster,
#                             may lose the last moment of acked writes on kill -9)
#   CASSANDRA_START_TIMEOUT   seconds to wait for CQL (default 120)
#   CASSANDRA_STOP_TIMEOUT    seconds to wait after SIGTERM before SIGKILL (default 60)
#   CASSANDRA_LOG_LEVEL       logback root level (default WARN); log: DATA_DIR/logs/system.log
#   CASSANDRA_JVM_OPTS        extra JVM options, appended (word-split on spaces)
#
# Exit codes: 0 ok; 1 error; 2 usage; 3 `status DATA_DIR` says not running.
# Only one Cassandra at a time on a machine: `start` refuses if the CQL or storage port is taken.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="cassandra.sh"

die() { echo "$PROG: error: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---- settings -------------------------------------------------------------------------------

CASSANDRA_VERSION="$(sed -n 's:.*<cassandra.version>\(.*\)</cassandra.version>.*:\1:p' "$HERE/pom.xml")"
[[ -n "$CASSANDRA_VERSION" ]] || die "cannot read <cassandra.version> from $HERE/pom.xml"
CACHE_ROOT="${SWITCHBOARD_CACHE:-${HOME:?set HOME or SWITCHBOARD_CACHE}/.cache/switchboard}"
LIB_DIR="${CASSANDRA_LIB_DIR:-$CACHE_ROOT/cassandra-$CASSANDRA_VERSION/lib}"
JAVA_BIN="${JAVA:-java}"
HEAP="${CASSANDRA_HEAP:-1g}"
HEAP_MIN="${CASSANDRA_HEAP_MIN:-128m}"
CDS="${CASSANDRA_CDS:-1}"
STORAGE_PORT="${CASSANDRA_STORAGE_PORT:-7000}"
START_TIMEOUT="${CASSANDRA_START_TIMEOUT:-120}"
STOP_TIMEOUT="${CASSANDRA_STOP_TIMEOUT:-60}"
LOG_LEVEL="${CASSANDRA_LOG_LEVEL:-WARN}"
COMMITLOG_SYNC="${CASSANDRA_COMMITLOG_SYNC:-batch}"
MARKER=".switchboard-complete"

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for v in STORAGE_PORT START_TIMEOUT STOP_TIMEOUT; do
    is_uint "${!v}" || die "$v must be a whole number, got '${!v}'"
done
[[ "$HEAP" =~ ^[0-9]+[mMgG]$ ]] || die "CASSANDRA_HEAP must look like 1g or 768m, got '$HEAP'"
[[ "$HEAP_MIN" =~ ^[0-9]+[mMgG]$ ]] || die "CASSANDRA_HEAP_MIN must look like 128m, got '$HEAP_MIN'"
JVM_OPTS=()

# ---- helpers --------------------------------------------------------------------------------

installed() { [[ -f "$LIB_DIR/$MARKER" ]]; }

# Class-data-sharing archive for this exact JVM build + classpath (the JVM ignores an archive
# that does not match, but a key in the name avoids even trying a stale one).
cds_archive() {
    local key
    key="$( { "$JAVA_BIN" -version 2>&1; classpath; } | cksum | cut -d' ' -f1)"
    echo "$(dirname -- "$LIB_DIR")/cds-$key.jsa"
}

CDS_FLAGS=(-XX:+UnlockDiagnosticVMOptions -XX:+AllowArchivingWithJavaAgent "-Xlog:cds*=error")

# After a node stopped cleanly: keep the archive it dumped at exit, if the JVM can map it
# (a damaged archive crashes the JVM instead of being ignored, so it is checked first).
cds_promote() {
    local a
    [[ "$CDS" == 1 ]] && installed || return 0
    a="$(cds_archive)"
    if [[ -s "$a.partial" ]]; then
        if "$JAVA_BIN" "${CDS_FLAGS[@]}" "-XX:SharedArchiveFile=$a.partial" -Xshare:on \
                -XX:TieredStopAtLevel=1 -XX:-CreateCoredumpOnCrash -XX:ErrorFile=/dev/null \
                -cp "$(classpath)" -version >/dev/null 2>&1; then
            mv -f -- "$a.partial" "$a" && log "saved class-data-sharing archive $a"
        else
            log "discarding an unusable class-data-sharing archive (next start writes a new one)"
        fi
    fi
    rm -f -- "$a.partial"
}

# After a node was killed: a half-written archive is useless.
cds_discard() {
    if [[ "$CDS" == 1 ]] && installed; then rm -f -- "$(cds_archive).partial"; fi
}

# Absolute path of DATA_DIR (created if missing).
abs_dir() {
    mkdir -p -- "$1" || die "cannot create directory $1"
    (cd -- "$1" && pwd -P)
}

pid_file() { echo "$1/cassandra.pid"; }

# Is PID a live Cassandra started by this script for DATA_DIR? (guards against reused pids)
is_our_pid() {
    local pid="$1" dir="$2" cmd
    [[ -n "$pid" && -r "/proc/$pid/cmdline" ]] || return 1
    cmd="$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" || return 1
    [[ "$cmd" == *"org.apache.cassandra.service.CassandraDaemon"* &&
       "$cmd" == *"-Dswitchboard.cassandra.dir=$dir "* ]]
}

# Prints the pid of the running node for DATA_DIR, or nothing (and cleans a stale pid file).
running_pid() {
    local dir="$1" pf pid
    pf="$(pid_file "$dir")"
    [[ -f "$pf" ]] || return 0
    pid="$(tr -dc '0-9' < "$pf")"
    if is_our_pid "$pid" "$dir"; then
        # A zombie (killed, not yet reaped by a parent) is not running.
        if [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" == "Z" ]]; then return 0; fi
        echo "$pid"
    else
        rm -f -- "$pf"
    fi
}

# "pid N data DIR" for every node this script started (any DATA_DIR), except for DIR $1.
other_nodes() {
    local p d
    for p in /proc/[0-9]*; do
        [[ -r "$p/cmdline" ]] || continue
        d="$(tr '\0' '\n' < "$p/cmdline" 2>/dev/null | sed -n 's/^-Dswitchboard.cassandra.dir=//p')" || continue
        [[ -n "$d" && "$d" != "${1:-}" ]] || continue
        [[ "$(awk '{print $3}' "$p/stat" 2>/dev/null)" == "Z" ]] && continue
        echo "pid ${p#/proc/} data $d"
    done
}

# True when 127.0.0.1:PORT accepts TCP.
port_open() {
    timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

# True when 127.0.0.1:PORT answers a CQL OPTIONS request (protocol v4) with SUPPORTED.
# Frame: version 0x04, flags 0, stream 0x0000, opcode 0x05 OPTIONS, body length 0.
# Reply header byte 0 is 0x84 (response, v4), byte 4 the opcode 0x06 SUPPORTED.
cql_ready() {
    local hdr
    hdr="$(timeout 3 bash -c "
        exec 3<>/dev/tcp/127.0.0.1/$1 || exit 1
        printf '\x04\x00\x00\x00\x05\x00\x00\x00\x00' >&3
        head -c 9 <&3 | od -An -tx1
    " 2>/dev/null | tr -d ' \n')" || return 1
    [[ "$hdr" == 84??????06* ]]
}

java_major() {
    local v
    v="$("$JAVA_BIN" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -1)"
    echo "${v:-0}"
}

classpath() {
    installed || die "jars not installed in $LIB_DIR; run: $0 install"
    local cp="" j
    for j in "$LIB_DIR"/*.jar; do cp="${cp:+$cp:}$j"; done
    echo "$cp"
}

file_size() { stat -c %s -- "$1" 2>/dev/null || echo 0; }

# Last lines each log got since this start (offsets taken before launching).
tail_logs() {
    local dir="$1" sys_off="$2" out_off="$3" f off
    for f in system.log stdout.log; do
        off="$sys_off"; [[ "$f" == stdout.log ]] && off="$out_off"
        f="$dir/logs/$f"
        (( $(file_size "$f") < off )) && off=0   # rotated meanwhile
        if (( $(file_size "$f") > off )); then
            echo "----- $f (this start, last 40 lines) -----" >&2
            tail -c +"$((off + 1))" -- "$f" | tail -n 40 >&2
        fi
    done
}

# ---- install --------------------------------------------------------------------------------

cmd_install() {
    if installed; then
        log "Cassandra $CASSANDRA_VERSION jars already in $LIB_DIR"
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found on PATH (Debian: apt-get install -y maven)"
    local parent tmp logf start
    parent="$(dirname -- "$LIB_DIR")"
    mkdir -p -- "$parent"
    # One installer at a time per cache; a second caller waits, then sees the marker.
    exec 9>"$parent/.install.lock"
    if command -v flock >/dev/null; then
        flock -w 900 9 || die "timed out waiting for another install holding $parent/.install.lock"
    fi
    if installed; then
        log "Cassandra $CASSANDRA_VERSION jars already in $LIB_DIR"
        return 0
    fi
    tmp="$parent/lib.tmp.$$"
    logf="$parent/install.log"
    rm -rf -- "$tmp"
    start=$SECONDS
    log "resolving org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION and its runtime deps via mvn ..."
    # -f: the pom lives in the repo; outputDirectory points outside it, so nothing is written
    # into the work tree. Maven's own local repository (~/.m2 unless MAVEN_OPTS says otherwise)
    # keeps the downloaded artifacts too.
    if ! mvn -B -ntp -f "$HERE/pom.xml" \
            dependency:copy-dependencies -DoutputDirectory="$tmp" >"$logf" 2>&1; then
        tail -n 40 -- "$logf" >&2
        rm -rf -- "$tmp"
        die "mvn failed (full log: $logf)"
    fi
    [[ -f "$tmp/cassandra-all-$CASSANDRA_VERSION.jar" ]] ||
        { rm -rf -- "$tmp"; die "mvn succeeded but cassandra-all-$CASSANDRA_VERSION.jar is missing (log: $logf)"; }
    touch "$tmp/$MARKER"
    rm -rf -- "$LIB_DIR"
    rm -f -- "$parent"/cds-*.jsa "$parent"/cds-*.jsa.partial
    mv -- "$tmp" "$LIB_DIR"
    local jars=("$LIB_DIR"/*.jar)
    log "installed ${#jars[@]} jars ($(du -sh "$LIB_DIR" | cut -f1)) in $LIB_DIR in $((SECONDS - start)) s"
}

# ---- start ----------------------------------------------------------------------------------

render_config() {
    local dir="$1" port="$2"
    mkdir -p "$dir/conf" "$dir/logs" "$dir/data" "$dir/commitlog" "$dir/saved_caches" \
             "$dir/hints" "$dir/cdc_raw" "$dir/triggers"
    local sync
    case "$COMMITLOG_SYNC" in
        batch)    sync='commitlog_sync: batch' ;;
        periodic) sync='commitlog_sync: periodic\ncommitlog_sync_period: 10000ms' ;;
        *) die "CASSANDRA_COMMITLOG_SYNC must be batch or periodic, got '$COMMITLOG_SYNC'" ;;
    esac
    sed -e "s|@DATA_DIR@|$dir|g" -e "s|@NATIVE_PORT@|$port|g" -e "s|@STORAGE_PORT@|$STORAGE_PORT|g" \
        -e "s|^@COMMITLOG_SYNC@\$|$sync|" \
        "$HERE/cassandra.yaml" > "$dir/conf/cassandra.yaml.tmp"
    mv -f "$dir/conf/cassandra.yaml.tmp" "$dir/conf/cassandra.yaml"
    cp -f "$HERE/logback.xml" "$dir/conf/logback.xml"
}

jvm_opts() {
    local dir="$1" cpus jamm cds=() archive
    cpus="$(nproc 2>/dev/null || echo 2)"
    (( cpus > 2 )) && cpus=2
    jamm=("$LIB_DIR"/jamm-*.jar)
    [[ -f "${jamm[0]}" ]] || die "no jamm-*.jar in $LIB_DIR; reinstall: rm -rf $LIB_DIR && $0 install"
    if [[ "$CDS" == 1 ]]; then
        archive="$(cds_archive)"
        # jamm is loaded as an agent; dumping an archive with an agent needs the diagnostic
        # switch. -Xlog: silence the JVM's per-class "cannot archive" notes on stdout.
        cds=("${CDS_FLAGS[@]}")
        if [[ -s "$archive" ]]; then
            cds+=("-XX:SharedArchiveFile=$archive")
        else
            rm -f -- "$archive.partial"
            cds+=("-XX:ArchiveClassesAtExit=$archive.partial")
        fi
    fi
    JVM_OPTS=(
        # identity (for pid checks and `status`), config, logs, storage
        "-Dswitchboard.cassandra.dir=$dir"
        "-Dcassandra.config=file://$dir/conf/cassandra.yaml"
        "-Dlogback.configurationFile=file://$dir/conf/logback.xml"
        "-Dcassandra.logdir=$dir/logs"
        "-Dcassandra.loglevel=$LOG_LEVEL"
        "-Dcassandra.storagedir=$dir"
        "-Dcassandra.triggers_dir=$dir/triggers"
        "-Dcassandra-foreground=yes"
        # fast single node: no gossip settling, no ring delay, no auth setup delay, no
        # shutdown announcement wait
        "-Dcassandra.skip_wait_for_gossip_to_settle=0"
        "-Dcassandra.ring_delay_ms=0"
        "-Dcassandra.superuser_setup_delay_ms=0"
        "-Dcassandra.shutdown_announce_in_ms=0"   # stop ~2 s faster (no peers to tell)
        "-Dcassandra.available_processors=$cpus"
        # heap and GC: small, modest on a shared 2-core box
        "-Xms$HEAP_MIN" "-Xmx$HEAP" "-Xss256k"
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
        -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
        "-XX:ParallelGCThreads=$cpus" -XX:ConcGCThreads=1
        # C1 only: a test node starts ~35% faster on ~30% less CPU; steady-state peak
        # throughput is lower (override: CASSANDRA_JVM_OPTS=-XX:TieredStopAtLevel=4)
        -XX:TieredStopAtLevel=1
        -XX:+UseThreadPriorities -XX:+PerfDisableSharedMem -XX:+ExitOnOutOfMemoryError
        -XX:-CreateCoredumpOnCrash "-XX:ErrorFile=$dir/logs/hs_err_pid%p.log"
        -XX:+UseTLAB -XX:+ResizeTLAB
        -ea "-da:net.openhft..."
        -Djava.net.preferIPv4Stack=true
        # jamm measures object sizes for memtable accounting; the tarball loads it as an agent
        "-javaagent:${jamm[0]}"
        # Java 17 module access Cassandra 5.0 needs (as conf/jvm17-server.options)
        -Djdk.attach.allowAttachSelf=true
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        --add-opens java.base/java.nio=ALL-UNNAMED
        # Netty as the tarball runs it
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11
        "${cds[@]}"
    )
}

cmd_start() {
    [[ $# -ge 1 && $# -le 2 ]] || usage
    local dir port pid cp major start deadline sys_off out_off
    dir="$(abs_dir "$1")"
    port="${2:-9042}"
    is_uint "$port" || die "PORT must be a number, got '$port'"
    [[ "$dir" != *"|"* && "$dir" != *" "* ]] || die "DATA_DIR must not contain spaces or '|': $dir"

    pid="$(running_pid "$dir")"
    if [[ -n "$pid" ]]; then
        if cql_ready "$port"; then
            log "already running for $dir (pid $pid) and answering CQL on 127.0.0.1:$port"
            return 0
        fi
        die "already running for $dir (pid $pid) but 127.0.0.1:$port does not answer CQL; run: $0 stop $dir"
    fi
    installed || die "jars not installed in $LIB_DIR; run: $0 install"
    local other
    other="$(other_nodes "$dir")"
    [[ -z "$other" ]] || die "another test Cassandra is running (only one at a time on this machine):
$other
stop it first: $0 stop DATA_DIR"
    command -v "$JAVA_BIN" >/dev/null || die "java not found (set JAVA=/path/to/java)"
    major="$(java_major)"
    [[ "$major" == 17 || "$major" == 11 ]] ||
        die "Cassandra $CASSANDRA_VERSION runs on Java 11 or 17; $JAVA_BIN is Java $major"
    port_open "$port" && die "127.0.0.1:$port is already in use (another Cassandra? only one may run at a time)"
    port_open "$STORAGE_PORT" &&
        die "storage port 127.0.0.1:$STORAGE_PORT is already in use (another Cassandra? set CASSANDRA_STORAGE_PORT)"

    render_config "$dir" "$port"
    cp="$(classpath)"
    jvm_opts "$dir"
    # shellcheck disable=SC2206  # deliberate word splitting of user-supplied extra options
    [[ -n "${CASSANDRA_JVM_OPTS:-}" ]] && JVM_OPTS+=(${CASSANDRA_JVM_OPTS})

    start=$SECONDS
    sys_off="$(file_size "$dir/logs/system.log")"
    echo "=== $(date -u '+%Y-%m-%dT%H:%M:%SZ') start port=$port" >> "$dir/logs/stdout.log"
    out_off="$(file_size "$dir/logs/stdout.log")"
    # New session, so the node survives the caller's terminal and is stopped by pid file only.
    # setsid and nohup exec in place, so $! is java's own pid.
    (cd "$dir" && exec setsid nohup "$JAVA_BIN" "${JVM_OPTS[@]}" -cp "$cp" \
        org.apache.cassandra.service.CassandraDaemon >> "$dir/logs/stdout.log" 2>&1 < /dev/null) &
    pid=$!
    disown "$pid"   # not the script's job: no "Killed" notices, no reaping by this shell
    echo "$pid" > "$(pid_file "$dir")"
    log "started pid $pid (data $dir, CQL 127.0.0.1:$port); waiting up to ${START_TIMEOUT}s for CQL ..."

    deadline=$((SECONDS + START_TIMEOUT))
    while (( SECONDS < deadline )); do
        if [[ -z "$(running_pid "$dir")" ]]; then
            tail_logs "$dir" "$sys_off" "$out_off"
            if [[ -f "$dir/logs/hs_err_pid$pid.log" && "$CDS" == 1 ]]; then
                # The JVM itself crashed; a bad class-data-sharing archive is the likely cause
                # we control. Drop it so the next start runs without (and writes a new one).
                rm -f -- "$(cds_archive)"
                log "JVM crashed ($dir/logs/hs_err_pid$pid.log); removed the class-data-sharing archive"
            fi
            rm -f -- "$(pid_file "$dir")"
            die "Cassandra exited during startup (logs: $dir/logs)"
        fi
        if cql_ready "$port"; then
            log "ready: CQL on 127.0.0.1:$port after $((SECONDS - start)) s (pid $pid)"
            return 0
        fi
        sleep 0.5
    done
    tail_logs "$dir" "$sys_off" "$out_off"
    log "not ready after ${START_TIMEOUT}s; killing pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f -- "$(pid_file "$dir")"
    cds_discard
    die "Cassandra did not answer CQL on 127.0.0.1:$port within ${START_TIMEOUT}s (logs: $dir/logs)"
}

# ---- stop / kill ----------------------------------------------------------------------------

wait_gone() {
    local dir="$2" deadline=$((SECONDS + $3))
    while (( SECONDS < deadline )); do
        [[ -z "$(running_pid "$dir")" ]] && return 0
        sleep 0.2
    done
    [[ -z "$(running_pid "$dir")" ]]
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    [[ -d "$1" ]] || { log "no data dir $1; nothing to stop"; return 0; }
    local dir pid start
    dir="$(abs_dir "$1")"
    pid="$(running_pid "$dir")"
    if [[ -z "$pid" ]]; then
        log "not running for $dir"
        rm -f -- "$(pid_file "$dir")"
        return 0
    fi
    start=$SECONDS
    kill -TERM "$pid" 2>/dev/null || true
    if wait_gone "$pid" "$dir" "$STOP_TIMEOUT"; then
        log "stopped pid $pid in $((SECONDS - start)) s"
        rm -f -- "$(pid_file "$dir")"
        cds_promote
        return 0
    else
        log "pid $pid still alive ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" "$dir" 10 || die "pid $pid survived SIGKILL"
        cds_discard
        log "killed pid $pid"
    fi
    rm -f -- "$(pid_file "$dir")"
}

cmd_kill() {
    [[ $# -eq 1 ]] || usage
    local dir pid
    dir="$(abs_dir "$1")"
    pid="$(running_pid "$dir")"
    [[ -n "$pid" ]] || { log "not running for $dir"; return 0; }
    kill -KILL "$pid"
    wait_gone "$pid" "$dir" 10 || die "pid $pid survived SIGKILL"
    rm -f -- "$(pid_file "$dir")"
    cds_discard
    log "SIGKILLed pid $pid"
}

# ---- status ---------------------------------------------------------------------------------

cmd_status() {
    [[ $# -le 1 ]] || usage
    if installed; then
        echo "installed: Cassandra $CASSANDRA_VERSION in $LIB_DIR ($(du -sh "$LIB_DIR" | cut -f1))"
    else
        echo "installed: no ($LIB_DIR; run: $0 install)"
    fi
    if [[ $# -eq 0 ]]; then
        local nodes line
        nodes="$(other_nodes "")"
        if [[ -n "$nodes" ]]; then
            while IFS= read -r line; do echo "running: $line"; done <<<"$nodes"
        else
            echo "running: none"
        fi
        return 0
    fi
    [[ -d "$1" ]] || { echo "running: no (no data dir $1)"; return 3; }
    local dir pid port
    dir="$(abs_dir "$1")"
    pid="$(running_pid "$dir")"
    if [[ -z "$pid" ]]; then
        echo "running: no ($dir)"
        return 3
    fi
    port="$(sed -n 's/^native_transport_port: *\([0-9]*\).*/\1/p' "$dir/conf/cassandra.yaml" 2>/dev/null)"
    local rss
    rss="$(awk '/^VmRSS/ {print $2 " " $3}' "/proc/$pid/status" 2>/dev/null)"
    if [[ -n "$port" ]] && cql_ready "$port"; then
        echo "running: pid $pid, CQL ready on 127.0.0.1:$port, RSS $rss ($dir)"
    else
        echo "running: pid $pid, CQL NOT ready on 127.0.0.1:${port:-?}, RSS $rss ($dir)"
    fi
}

# ---- main -----------------------------------------------------------------------------------

[[ $# -ge 1 ]] || usage
sub="$1"; shift
case "$sub" in
    install)   [[ $# -eq 0 ]] || usage; cmd_install ;;
    start)     cmd_start "$@" ;;
    stop)      cmd_stop "$@" ;;
    kill)      cmd_kill "$@" ;;
    status)    cmd_status "$@" ;;
    classpath) [[ $# -eq 0 ]] || usage; classpath ;;
    -h|--help|help) usage ;;
    *) echo "$PROG: unknown command '$sub'" >&2; usage ;;
esac
