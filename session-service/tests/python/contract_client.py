#!/usr/bin/env python3
"""The wire contract from Python's gRPC stack.

Generates Python stubs from the committed `.proto` files, then plays Stop Processing A, B, C and D
and the Logout's AF1 (a logout reason is required) against a running interaction-server and
session-service with plain grpcio calls, as a media server, a router, a reporter and an agent's
desktop would. Each party's view is checked against the seeds' tables in CONTRACT.md: the answers,
and the event kinds on each party's stream. It prints one line per flow that matches and exits
non-zero, naming the difference, on the first one that does not.

What a party "saw" of a flow is read up to a fence (an event the party is sure to see, caused after
the flow), so a missing event and an extra one are both caught without sleeping.

Environment:
  IXN_ADDR            interaction-server's host:port
  SESSION_ADDR        session-service's host:port
  IXN_TOKENS          JSON: {"media_server"|"router"|"reporter"|"agent": {"sub": ..., "token": ...}}
                      (the client signs nothing itself)
  IXN_LOGOUT_REASONS  the platform's logout reason codes, comma-separated, in their configured order
  IXN_PROTO_ROOT      the directory holding `ixn/` (default: the repository's `proto/`)

Needs grpcio, grpcio-tools and grpcio-status.
"""

import importlib
import importlib.resources
import json
import os
import pathlib
import queue
import subprocess
import sys
import tempfile
import threading
import uuid

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# How long any single answer or event may take; reaching it is a failure, never a way to wait.
PATIENCE = 15.0


class Difference(Exception):
    """What a party got differs from what the seed says."""


def generate_stubs(proto_root, out_dir):
    """Compiles every contract file into `out_dir` with grpc_tools' protoc and makes it importable.

    The include path is the one proto/build.rs compiles with (the `proto/` directory itself), plus
    grpc_tools' bundled well-known types for `google/protobuf/timestamp.proto`.
    """
    root = pathlib.Path(proto_root)
    protos = sorted(p.relative_to(root).as_posix() for p in root.glob("ixn/**/*.proto"))
    if not protos:
        raise Difference(f"no .proto files under {proto_root}/ixn")
    well_known = importlib.resources.files("grpc_tools") / "_proto"
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *protos,
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise Difference(f"protoc failed on {protos}:\n{done.stderr}")
    sys.path.insert(0, str(out_dir))


def rid():
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# Reading events
# ---------------------------------------------------------------------------------------------


def kind(event):
    """The event's kind as the contract names it (the body message's name, e.g. `PartyRemoved`)."""
    field = event.WhichOneof("body")
    if field is None:
        raise Difference(f"an event without a body: {event}")
    return getattr(event, field).DESCRIPTOR.name


def body(event):
    return getattr(event, event.WhichOneof("body"))


def interaction_of(event):
    """The interaction an event is about, if any."""
    b = body(event)
    fields = b.DESCRIPTOR.fields_by_name
    if "interaction_id" in fields:
        return b.interaction_id
    if "interaction" in fields:
        return b.interaction.interaction_id
    return None


def label(party):
    """`agent:a1@place-a1`, `router:r1`, `media-server:ms1`…"""
    which = party.WhichOneof("kind")
    if which == "agent":
        a = party.agent
        return f"agent:{a.agent_id}@{a.place_id}" if a.place_id else f"agent:{a.agent_id}"
    if which == "router":
        return f"router:{party.router.router_id}"
    if which == "media_server":
        return f"media-server:{party.media_server.server_id}"
    if which is None:
        return "nobody"
    # admin, system, service, reporter: one field naming the subject.
    fields = getattr(party, which).ListFields()
    return f"{which}:{fields[0][1] if fields else ''}"


def who(party):
    """A party without an agent's place: who stopped something is named by its token alone."""
    return label(party).split("@")[0]


def describe(event):
    """`Kind`, `PartyRemoved(party)`, and `→to` for a directed event."""
    text = kind(event)
    if text == "PartyRemoved":
        text += f"({label(body(event).party)})"
    if event.to:
        text += "→" + ",".join(label(p) for p in event.to)
    return text


def about(events, interaction_id):
    return [e for e in events if interaction_of(e) == interaction_id]


def directed(events):
    return [e for e in events if len(e.to) > 0]


class Feed:
    """One party's server stream, read by a thread into a queue so that every read has a bound."""

    def __init__(self, name, call):
        self.name = name
        self.call = call
        self.items = queue.Queue()
        self.answered = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        # The server answers a subscription's headers once it follows the log: a stream that
        # starts at the head misses nothing caused after this.
        if not self.answered.wait(PATIENCE):
            raise Difference(f"{self.name}: the stream was not answered within {PATIENCE:.0f} s")

    def _read(self):
        try:
            self.call.initial_metadata()
            self.answered.set()
            for event in self.call:
                self.items.put(("event", event))
            self.items.put(("end", self.call.code()))
        except grpc.RpcError as error:
            self.answered.set()
            self.items.put(("failed", error))

    def next(self):
        """The next event, or None when the server ended the stream with OK."""
        try:
            what, value = self.items.get(timeout=PATIENCE)
        except queue.Empty:
            raise Difference(f"{self.name}: no event within {PATIENCE:.0f} s") from None
        if what == "event":
            return value
        if what == "end":
            if value != grpc.StatusCode.OK:
                raise Difference(f"{self.name}: the stream ended with {value}, not OK")
            return None
        raise Difference(f"{self.name}: the stream failed: {explain(value)}")

    def until(self, is_fence):
        """The events before the first one `is_fence` accepts."""
        return self.up_to(is_fence)[0]

    def up_to(self, is_fence):
        """The events before the first one `is_fence` accepts, and that one."""
        seen = []
        while True:
            event = self.next()
            if event is None:
                seen = [describe(e) for e in seen]
                raise Difference(f"{self.name}: the stream ended; saw {seen}")
            if is_fence(event):
                return seen, event
            seen.append(event)

    def to_end(self):
        """Every event until the server ends the stream with OK."""
        seen = []
        while (event := self.next()) is not None:
            seen.append(event)
        return seen

    def close(self):
        self.call.cancel()


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def error_info(error):
    """The `google.rpc.ErrorInfo` of a failed call, from its `grpc-status-details-bin` trailer."""
    status = rpc_status.from_call(error)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def explain(error):
    info = error_info(error) if isinstance(error, grpc.Call) else None
    reason = f" {info.reason} {dict(info.metadata)}" if info else ""
    return f"{error.code().name}{reason}: {error.details()}"


def expect(what, got, want):
    if got != want:
        raise Difference(f"{what}: got {got}, expected {want}")


# ---------------------------------------------------------------------------------------------
# The cast
# ---------------------------------------------------------------------------------------------


class Cast:
    """The parties other than the agent: a media server, a router and a reporter, each with its
    `Subscribe` stream on interaction-server."""

    def __init__(self, pb, tokens, ixn_addr, session_addr, logout_reasons):
        self.pb = pb
        self.tokens = tokens
        self.logout_reasons = logout_reasons
        self.ixn_channel = grpc.insecure_channel(ixn_addr)
        self.session_channel = grpc.insecure_channel(session_addr)
        self.interactions = pb.interaction_grpc.InteractionServiceStub(self.ixn_channel)
        self.events = pb.events_grpc.EventServiceStub(self.ixn_channel)
        self.sessions = pb.session_grpc.SessionServiceStub(self.session_channel)
        self.ms = tokens["media_server"]["sub"]
        self.router = tokens["router"]["sub"]
        self.agent = tokens["agent"]["sub"]
        self.place = f"place-{self.agent}"
        self.feeds = {
            role: self.subscribe(role) for role in ("reporter", "router", "media_server")
        }

    def auth(self, role):
        return (("authorization", f"Bearer {self.tokens[role]['token']}"),)

    def call(self, method, request, role):
        return method(request, metadata=self.auth(role), timeout=PATIENCE)

    def subscribe(self, role):
        request = self.pb.events.SubscribeRequest(from_head=True)
        stream = self.events.Subscribe(request, metadata=self.auth(role))
        return Feed(f"{role} {self.tokens[role]['sub']}", stream)

    # Parties as the events must name them.
    def agent_party(self):
        return f"agent:{self.agent}@{self.place}"

    def router_party(self):
        return f"router:{self.router}"

    # States of the seed's "state before".

    def submit(self, queue_name):
        request = self.pb.interaction.SubmitRequest(
            request_id=rid(), media_type="chat", queue=queue_name
        )
        submitted = self.call(self.interactions.Submit, request, "media_server")
        return submitted.interaction.interaction_id

    def routing(self):
        """Submitted by the media server into `demo`, pulled by the router: ROUTING."""
        interaction_id = self.submit("demo")
        request = self.pb.interaction.PullRequest(
            request_id=rid(), queue="demo", interaction_id=interaction_id
        )
        pulled = self.call(self.interactions.Pull, request, "router").interaction
        state = self.pb.interaction.InteractionState.Name(pulled.state)
        if pulled.interaction_id != interaction_id or state != "INTERACTION_STATE_ROUTING":
            raise Difference(f"Pull answered {pulled.interaction_id} in {state}")
        return interaction_id

    def handling(self, desktop):
        """Routed, delivered to the agent, the Invite read off its bus, accepted: HANDLING."""
        interaction_id = self.routing()
        request = self.pb.interaction.DeliverRequest(
            request_id=rid(), interaction_id=interaction_id, agent_id=self.agent
        )
        self.call(self.interactions.Deliver, request, "router")
        invite = desktop.until_kind("Invite")
        if invite.invite.interaction.interaction_id != interaction_id:
            raise Difference(f"the agent was invited to {invite.invite.interaction.interaction_id}")
        request = self.pb.interaction.AcceptRequest(
            request_id=rid(), interaction_id=interaction_id, ticket_id=invite.invite.ticket_id
        )
        accepted = self.call(self.interactions.Accept, request, "agent").interaction
        state = self.pb.interaction.InteractionState.Name(accepted.state)
        if state != "INTERACTION_STATE_HANDLING":
            raise Difference(f"Accept left the interaction in {state}")
        return interaction_id

    def stop(self, interaction_id, role):
        request = self.pb.interaction.StopProcessingRequest(
            request_id=rid(),
            interaction_id=interaction_id,
            reason=self.pb.common.Reason(code="done"),
        )
        return self.call(self.interactions.StopProcessing, request, role)

    def observers(self):
        """What the reporter, the router and the media server saw, up to a fence: an interaction
        the media server submits, whose InteractionSubmitted all three see."""
        fence = self.submit("fence")
        return {
            role: feed.until(lambda e: interaction_of(e) == fence)
            for role, feed in self.feeds.items()
        }


class Desktop:
    """The agent's desktop: its session and two `Connect` streams (two windows of the MediaBar), so
    that "every stream of that agent" is checked."""

    def __init__(self, cast):
        self.cast = cast
        pb = cast.pb
        request = pb.session.LoginRequest(
            request_id=rid(),
            place_id=cast.place,
            media_types=["chat", "email"],
            ready=True,
        )
        self.session = cast.call(cast.sessions.Login, request, "agent")
        self.session_id = self.session.session_id
        # Toggled for each fence; both channels start Ready.
        self.email_ready = True
        self.buses = [self.connect(n) for n in (1, 2)]
        for bus in self.buses:
            created = [kind(bus.next()) for _ in range(4)]
            want = ["SessionCreated", "ChannelGroupCreated", "ChannelCreated", "ChannelCreated"]
            expect(bus.name, created, want)

    def connect(self, n):
        request = self.cast.pb.session.ConnectRequest(session_id=self.session_id, after_sequence=0)
        stream = self.cast.sessions.Connect(request, metadata=self.cast.auth("agent"))
        return Feed(f"agent {self.cast.agent} (stream {n})", stream)

    def until_kind(self, wanted):
        """The first event of kind `wanted` on every stream (the same one on each)."""
        found = [bus.up_to(lambda e: kind(e) == wanted)[1] for bus in self.buses]
        if len({e.event_id for e in found}) != 1:
            raise Difference(f"the agent's streams disagree on the {wanted}: {found}")
        return found[0]

    def saw_all(self):
        """Everything on the agent's streams up to a fence it makes itself: a Ready / Not Ready
        change of its email channel, recognised by its request id."""
        pb = self.cast.pb
        self.email_ready = not self.email_ready
        request_id = rid()
        if self.email_ready:
            request = pb.session.SetReadyRequest(
                request_id=request_id, session_id=self.session_id, media_type="email"
            )
            self.cast.call(self.cast.sessions.SetReady, request, "agent")
        else:
            request = pb.session.SetNotReadyRequest(
                request_id=request_id,
                session_id=self.session_id,
                media_type="email",
                reason=pb.common.Reason(code="break"),
            )
            self.cast.call(self.cast.sessions.SetNotReady, request, "agent")

        def is_fence(e):
            return kind(e) == "AgentStateChanged" and e.correlation_id == request_id

        seen = [bus.until(is_fence) for bus in self.buses]
        for bus, view in zip(self.buses, seen):
            if [e.event_id for e in view] != [e.event_id for e in seen[0]]:
                raise Difference(
                    f"{bus.name} saw {[describe(e) for e in view]}, "
                    f"{self.buses[0].name} saw {[describe(e) for e in seen[0]]}"
                )
        return seen[0]

    def saw(self, interaction_id):
        return about(self.saw_all(), interaction_id)

    def saw_through(self, wanted, interaction_id):
        """What the agent's streams show of `interaction_id` once its `wanted` event has come.
        session-service relays that event independently of the agent's own changes, so it is waited
        for first; the fence after it then proves that nothing else came."""

        def is_wanted(e):
            return kind(e) == wanted and interaction_of(e) == interaction_id

        found = [bus.up_to(is_wanted) for bus in self.buses]
        if len({event.event_id for _, event in found}) != 1:
            raise Difference(f"the agent's streams disagree on the {wanted}: {found}")
        before, event = found[0]
        return about(before + [event] + self.saw_all(), interaction_id)


def settle(cast, desktop):
    """Reads every party up to a fence, so that what a flow's setup caused is not counted as the
    flow's."""
    cast.observers()
    desktop.saw_all()


# ---------------------------------------------------------------------------------------------
# The flows
# ---------------------------------------------------------------------------------------------


def views(events, interaction_id, only_directed=False):
    """How each event about `interaction_id` reads, optionally only those addressed to someone."""
    mine = about(events, interaction_id)
    return [describe(e) for e in (directed(mine) if only_directed else mine)]


def check_stop(interaction_id, ack, seen, requester, owner):
    """What every version shares: the ack names the interaction and the log position of its
    ProcessingStopped; reporting gets PartyRemoved (the owner), then ProcessingStopped (with the
    reason given and the requester as who stopped it); a media server sees the same of its own
    submissions."""
    expect("the ack's interaction_id", ack.interaction_id, interaction_id)
    want = [f"PartyRemoved({owner})", "ProcessingStopped"]
    expect("the reporter", views(seen["reporter"], interaction_id), want)
    expect("the media server (its submission)", views(seen["media_server"], interaction_id), want)
    stopped = about(seen["reporter"], interaction_id)[1]
    expect("the ack's sequence (ProcessingStopped's)", ack.sequence, stopped.sequence)
    expect("ProcessingStopped.stopped_by", who(stopped.processing_stopped.stopped_by), requester)
    expect("ProcessingStopped.reason", stopped.processing_stopped.reason.code, "done")


def check_relayed(events):
    """An interaction-server event on the agent's bus is relayed: session-service's own, naming
    where it came from."""
    for e in events:
        origin = (e.source, e.relayed_from.source)
        expect(f"{describe(e)}'s (source, relayed from)", origin, SESSION_RELAYED)


SESSION_RELAYED = ("session-service", "interaction-server")


def stop_a(cast, desktop):
    interaction_id = cast.handling(desktop)
    settle(cast, desktop)
    ack = cast.stop(interaction_id, "media_server")
    seen = cast.observers()
    agent = desktop.saw_through("Revoked", interaction_id)
    expect("the agent (owner)", [describe(e) for e in agent], [f"Revoked→{cast.agent_party()}"])
    check_relayed(agent)
    expect("the router", views(seen["router"], interaction_id, only_directed=True), [])
    requester = views(seen["media_server"], interaction_id, only_directed=True)
    expect("the media server (requester)", requester, [])
    check_stop(interaction_id, ack, seen, f"media-server:{cast.ms}", cast.agent_party())
    return f"media server {cast.ms} stops, agent {cast.agent} handles: ack; Revoked to the agent"


def stop_b(cast, desktop):
    interaction_id = cast.routing()
    settle(cast, desktop)
    ack = cast.stop(interaction_id, "media_server")
    seen = cast.observers()
    owner = views(seen["router"], interaction_id, only_directed=True)
    expect("the router (owner)", owner, [f"Abandoned→{cast.router_party()}"])
    requester = views(seen["media_server"], interaction_id, only_directed=True)
    expect("the media server (requester)", requester, [])
    expect("the agent (not involved)", [describe(e) for e in desktop.saw(interaction_id)], [])
    check_stop(interaction_id, ack, seen, f"media-server:{cast.ms}", cast.router_party())
    return f"media server {cast.ms} stops, router {cast.router} routes: ack; Abandoned to it"


def stop_c(cast, desktop):
    interaction_id = cast.handling(desktop)
    settle(cast, desktop)
    ack = cast.stop(interaction_id, "agent")
    seen = cast.observers()
    # The requester's Revoked comes on every stream of the agent: saw_through compares both.
    agent = desktop.saw_through("Revoked", interaction_id)
    want = [f"Revoked→{cast.agent_party()}"]
    expect("the agent (requester, owner)", [describe(e) for e in agent], want)
    check_relayed(agent)
    expect("the router", views(seen["router"], interaction_id, only_directed=True), [])
    check_stop(interaction_id, ack, seen, f"agent:{cast.agent}", cast.agent_party())
    return f"agent {cast.agent} stops what it handles: ack; Revoked on both of its streams"


def stop_d(cast, desktop):
    interaction_id = cast.routing()
    settle(cast, desktop)
    ack = cast.stop(interaction_id, "router")
    seen = cast.observers()
    requester = views(seen["router"], interaction_id, only_directed=True)
    expect("the router (requester, owner)", requester, [])
    expect("the agent (not involved)", [describe(e) for e in desktop.saw(interaction_id)], [])
    check_stop(interaction_id, ack, seen, cast.router_party(), cast.router_party())
    return f"router {cast.router} stops what it routes: ack only"


def logout_af1(cast, desktop):
    pb = cast.pb
    session = desktop.session
    # The reasons collected at login are what the Logout Reason Selection Screen offers.
    expect("Login's logout_reason_required", session.logout_reason_required, True)
    expect("Login's logout_reasons", [r.code for r in session.logout_reasons], cast.logout_reasons)
    desktop.saw_all()

    # The MediaBar asks without a reason: HIS's NeedInfo, offering the platform's reasons.
    request_id = rid()
    request = pb.session.LogoutRequest(request_id=request_id, session_id=desktop.session_id)
    try:
        cast.call(cast.sessions.Logout, request, "agent")
        raise Difference("a logout without a reason succeeded")
    except grpc.RpcError as error:
        refusal = error
    expect("the refusal's code", refusal.code(), grpc.StatusCode.FAILED_PRECONDITION)
    info = error_info(refusal)
    if info is None:
        raise Difference(f"the refusal carries no ErrorInfo: {explain(refusal)}")
    expect("ErrorInfo.domain", info.domain, "ixn")
    expect("ErrorInfo.reason", info.reason, "LOGOUT_REASON_REQUIRED")
    offered = info.metadata.get("logout_reasons", "").split(",")
    expect("ErrorInfo.metadata[logout_reasons]", offered, cast.logout_reasons)
    expect("ErrorInfo.metadata[session_id]", info.metadata.get("session_id"), desktop.session_id)
    # A failure changes nothing: no event, the session still active.
    expect("the agent after the refusal", [describe(e) for e in desktop.saw_all()], [])
    request = pb.session.GetSessionRequest(session_id=desktop.session_id)
    after = cast.call(cast.sessions.GetSession, request, "agent")
    state = pb.session.SessionState.Name(after.state)
    expect("the session after the refusal", state, "SESSION_STATE_ACTIVE")

    # The MediaBar resubmits with the selected reason (the same request id: a failure is not
    # recorded), and the Basic Flow resumes at step 3.
    chosen = offered[0]
    request = pb.session.LogoutRequest(
        request_id=request_id,
        session_id=desktop.session_id,
        reason=pb.common.Reason(code=chosen),
    )
    done = cast.call(cast.sessions.Logout, request, "agent")
    expect("the logout's session_id", done.session_id, desktop.session_id)

    # Steps 3 to 10: the Ready channels made Not Ready with the logout reason, both deactivated
    # (the platform supports it), disposed, then the group and the session; the message bus is
    # closed with OK.
    ready = ["chat"] + (["email"] if desktop.email_ready else [])
    want = ["AgentStateChanged"] * len(ready) + [
        "ChannelDeactivated",
        "ChannelDeactivated",
        "ChannelDisposed",
        "ChannelDisposed",
        "ChannelGroupDisposed",
        "SessionDisposed",
    ]
    for bus in desktop.buses:
        events = bus.to_end()
        expect(bus.name, [kind(e) for e in events], want)
        changes = [e.agent_state_changed for e in events[: len(ready)]]
        not_ready = [
            (c.media_type, pb.common.AgentState.Name(c.state), c.reason.code) for c in changes
        ]
        want_not_ready = [(m, "AGENT_STATE_NOT_READY", chosen) for m in ready]
        expect(f"{bus.name}'s Not Ready changes", sorted(not_ready), sorted(want_not_ready))

    # The switch was told, with the reason: the reporter sees the agent's AgentLogout.
    def is_logout(e):
        return kind(e) == "AgentLogout" and e.agent_logout.agent.agent_id == cast.agent

    _, switch_logout = cast.feeds["reporter"].up_to(is_logout)
    expect("AgentLogout.reason", switch_logout.agent_logout.reason.code, chosen)
    return (
        f"FAILED_PRECONDITION LOGOUT_REASON_REQUIRED offering {','.join(offered)}; resubmitted "
        f"with {chosen}: logged out, both Connect streams closed with OK"
    )


def main():
    here = pathlib.Path(__file__).resolve().parent
    proto_root = pathlib.Path(os.environ.get("IXN_PROTO_ROOT") or here.parents[2] / "proto")
    try:
        ixn_addr = os.environ["IXN_ADDR"]
        session_addr = os.environ["SESSION_ADDR"]
        tokens = json.loads(os.environ["IXN_TOKENS"])
        logout_reasons = os.environ["IXN_LOGOUT_REASONS"].split(",")
    except KeyError as missing:
        print(f"contract client: {missing} must be set", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="ixn-stubs-") as out_dir:
        try:
            generate_stubs(proto_root, out_dir)
        except Difference as d:
            print(f"contract client: {d}", file=sys.stderr)
            return 1

        class Stubs:
            common = importlib.import_module("ixn.common.v1.common_pb2")
            events = importlib.import_module("ixn.events.v1.events_pb2")
            events_grpc = importlib.import_module("ixn.events.v1.events_pb2_grpc")
            interaction = importlib.import_module("ixn.interaction.v1.interaction_pb2")
            interaction_grpc = importlib.import_module("ixn.interaction.v1.interaction_pb2_grpc")
            session = importlib.import_module("ixn.session.v1.session_pb2")
            session_grpc = importlib.import_module("ixn.session.v1.session_pb2_grpc")

        flow = "setup"
        cast = desktop = None
        try:
            cast = Cast(Stubs, tokens, ixn_addr, session_addr, logout_reasons)
            desktop = Desktop(cast)
            for flow, play in [
                ("Stop Processing A", stop_a),
                ("Stop Processing B", stop_b),
                ("Stop Processing C", stop_c),
                ("Stop Processing D", stop_d),
                ("Logout AF1", logout_af1),
            ]:
                print(f"passed  {flow}: {play(cast, desktop)}", flush=True)
        except Difference as d:
            print(f"FAILED  {flow}: {d}", file=sys.stderr)
            return 1
        except grpc.RpcError as error:
            print(f"FAILED  {flow}: an unexpected failure: {explain(error)}", file=sys.stderr)
            return 1
        finally:
            # Cancelled so that no reader is left waiting on a server that carries on.
            streams = [*(cast.feeds.values() if cast else []), *(desktop.buses if desktop else [])]
            for stream in streams:
                stream.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
