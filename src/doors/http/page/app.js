// herald's chat page: REST for history, sending, message changes and
// membership, and one EventSource on /api/events for live messages, edits,
// deletions, reactions, read receipts, membership changes, presence and
// typing. No framework and no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "herald.token";

const state = {
  token: null,
  me: null,
  conversations: new Map(), // id -> Conversation (JSON mapping of the proto)
  order: [],                // conversation ids, most recently active first
  current: null,            // open conversation id
  shown: new Set(),         // message ids rendered in the open conversation
  messages: new Map(),      // message id -> Message, of the open conversation
  replyTo: null,            // the message the composer answers
  editing: null,            // the message the composer edits
  events: null,             // the EventSource
  lastEventId: null,        // the id of the last event received live
  reads: new Map(),         // conversation id -> Map(user id -> newest message id they read)
  online: new Set(),        // user ids online now
  typing: new Map(),        // conversation id -> Map(user id -> timer hiding "typing")
  typedAt: 0,               // when this page last said it was typing
};

// herald relays one typing signal per 2 s; clients show it for about 5 s.
const TYPING_EVERY_MS = 2000;
const TYPING_SHOWN_MS = 5000;

const position = (id) => Number(id || 0);

// The reactions the page offers; any one grapheme cluster is accepted.
const PALETTE = ["👍", "❤️", "😂", "🎉", "😮", "😢"];

// ---- token -----------------------------------------------------------------

function tokenFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get("token");
  if (token) history.replaceState(null, "", location.pathname + location.search);
  return token;
}

function subjectOf(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(payload)).sub || null;
  } catch {
    return null;
  }
}

// ---- API -------------------------------------------------------------------

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: {
      Authorization: `Bearer ${state.token}`,
      ...(body ? { "Content-Type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) signOut("Your token was refused (expired or invalid).");
  if (!response.ok) {
    const error = new Error(data.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

// ---- rendering -------------------------------------------------------------

function othersIn(conversation) {
  const others = (conversation.participantIds || []).filter((id) => id !== state.me);
  return others.length ? others.join(", ") : state.me;
}

function timeOf(message) {
  return message.createdAt
    ? new Date(message.createdAt).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
    : "";
}

function renderConversations() {
  const list = $("conversations");
  list.replaceChildren();
  if (!state.order.length) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "No conversations yet";
    list.append(empty);
  }
  for (const id of state.order) {
    const conversation = state.conversations.get(id);
    const item = document.createElement("li");
    item.className = "conversation";
    item.dataset.id = id;
    item.setAttribute("aria-current", String(id === state.current));
    const avatar = document.createElement("span");
    const others = (conversation.participantIds || []).filter((id) => id !== state.me);
    avatar.className = "avatar" + (others.some((id) => state.online.has(id)) ? " online" : "");
    avatar.textContent = othersIn(conversation).slice(0, 1);
    const summary = document.createElement("div");
    summary.className = "summary";
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = othersIn(conversation);
    const preview = document.createElement("div");
    preview.className = "preview";
    const last = conversation.lastMessage;
    preview.textContent = last ? `${last.userId === state.me ? "You: " : ""}${last.content}` : "No messages yet";
    summary.append(title, preview);
    item.append(avatar, summary);
    const unread = Number(conversation.unreadCount || 0);
    if (unread > 0) {
      const badge = document.createElement("span");
      badge.className = "unread";
      badge.textContent = unread;
      item.append(badge);
    }
    item.addEventListener("click", () => openConversation(id));
    list.append(item);
  }
}

function appendMessage(message) {
  if (state.shown.has(message.id)) return;
  state.shown.add(message.id);
  state.messages.set(message.id, message);
  const list = $("messages");
  list.querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.dataset.id = message.id;
  fillMessage(item, message);
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  list.append(item);
  if (stick || message.userId === state.me) list.scrollTop = list.scrollHeight;
  renderSeen();
}

// A message as it now is: edited, deleted, with its reactions, answering
// another (quoted above it); with the actions the page user may take.
function fillMessage(item, message) {
  const mine = message.userId === state.me;
  // A system message (published by the application) is shown apart: it
  // is nobody's, so it is never "mine" and has no author's actions.
  item.className = "message" + (message.system ? " system" : mine ? " mine" : "") + (message.deleted ? " deleted" : "");
  const parts = [];
  if (message.replyToId) {
    const quoted = state.messages.get(message.replyToId);
    const quote = document.createElement("div");
    quote.className = "quote";
    quote.dataset.replyTo = message.replyToId;
    quote.textContent = !quoted ? "↩ an earlier message" : quoted.deleted ? "↩ message deleted" : `↩ ${quoted.userId}: ${quoted.content}`;
    parts.push(quote);
  }
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = message.deleted ? "message deleted" : message.content;
  parts.push(bubble);
  const meta = document.createElement("div");
  meta.className = "meta";
  const from = message.system ? `${message.userId === "system" ? "notice" : message.userId} · ` : mine ? "" : message.userId + " · ";
  meta.textContent = `${from}${timeOf(message)}${message.editedAt && !message.deleted ? " (edited)" : ""}`;
  parts.push(meta);
  if (!message.deleted) {
    const reactions = document.createElement("div");
    reactions.className = "reactions";
    for (const reaction of message.reactions || []) {
      const chip = document.createElement("button");
      chip.type = "button";
      chip.className = "reaction" + (reaction.mine ? " mine" : "");
      chip.dataset.emoji = reaction.emoji;
      chip.textContent = `${reaction.emoji} ${reaction.count}`;
      chip.addEventListener("click", () => react(message, reaction.emoji, !reaction.mine));
      reactions.append(chip);
    }
    parts.push(reactions);
    const actions = document.createElement("div");
    actions.className = "actions";
    const action = (name, label, run) => {
      const button = document.createElement("button");
      button.type = "button";
      button.className = `link ${name}`;
      button.textContent = label;
      button.addEventListener("click", run);
      actions.append(button);
    };
    action("reply", "Reply", () => compose({ replyTo: message }));
    for (const emoji of PALETTE) action("react", emoji, () => react(message, emoji, true));
    if (mine && !message.system) {
      action("edit", "Edit", () => compose({ editing: message }));
      action("delete", "Delete", () => deleteMessage(message));
    }
    parts.push(actions);
  }
  const seen = document.createElement("div");
  seen.className = "seen";
  parts.push(seen);
  item.replaceChildren(...parts);
}

// Redraws a message that changed, and the replies that quote it.
function updateMessage(message) {
  if (message.conversationId !== state.current || !state.shown.has(message.id)) return;
  const known = state.messages.get(message.id);
  // Edits and deletions travel without reactions: keep the ones we know.
  const now = { ...message, reactions: message.deleted ? [] : message.reactions ?? known?.reactions };
  state.messages.set(message.id, now);
  const item = $("messages").querySelector(`.message[data-id="${CSS.escape(message.id)}"]`);
  if (item) fillMessage(item, now);
  for (const reply of $("messages").querySelectorAll(`.quote[data-reply-to="${CSS.escape(message.id)}"]`)) {
    const replying = reply.closest(".message");
    fillMessage(replying, state.messages.get(replying.dataset.id));
  }
  renderSeen();
}

// The composer answers a message, or edits one of mine.
function compose({ replyTo = null, editing = null }) {
  state.replyTo = replyTo;
  state.editing = editing;
  const banner = $("composing");
  banner.hidden = !replyTo && !editing;
  $("composing-text").textContent = editing ? "Editing your message" : replyTo ? `Replying to ${replyTo.userId}: ${replyTo.content}` : "";
  if (editing) $("content").value = editing.content;
  $("content").focus();
}

async function react(message, emoji, add) {
  const path = `/api/conversations/${encodeURIComponent(message.conversationId)}/messages/${encodeURIComponent(message.id)}/reactions/${encodeURIComponent(emoji)}`;
  try {
    updateMessage(await api(add ? "PUT" : "DELETE", path));
  } catch (error) {
    $("thread-error").textContent = error.message;
  }
}

async function deleteMessage(message) {
  const path = `/api/conversations/${encodeURIComponent(message.conversationId)}/messages/${encodeURIComponent(message.id)}`;
  try {
    updateMessage(await api("DELETE", path));
  } catch (error) {
    $("thread-error").textContent = error.message;
  }
}

// "Seen by …" under my newest message that others have read, from the
// read receipts on the event stream.
function renderSeen() {
  const reads = state.reads.get(state.current) || new Map();
  const mine = [...document.querySelectorAll("#messages .message.mine")];
  mine.forEach((item) => { item.querySelector(".seen").textContent = ""; });
  for (const item of mine.reverse()) {
    const readers = [...reads].filter(([user, id]) => user !== state.me && position(id) >= position(item.dataset.id));
    if (readers.length) {
      item.querySelector(".seen").textContent = `Seen by ${readers.map(([user]) => user).join(", ")}`;
      return;
    }
  }
}

// The members panel of the open conversation: groups only.
function renderMembers() {
  const conversation = state.conversations.get(state.current);
  const group = conversation && conversation.creatorId;
  $("members-panel").hidden = !group;
  if (!group) return;
  const list = $("members");
  list.replaceChildren();
  for (const user of conversation.participantIds || []) {
    const item = document.createElement("li");
    item.dataset.user = user;
    const name = document.createElement("span");
    const dot = document.createElement("span");
    dot.className = "dot" + (state.online.has(user) || user === state.me ? " online" : "");
    name.append(dot, user + (user === conversation.creatorId ? " (creator)" : ""));
    item.append(name);
    if (conversation.creatorId === state.me && user !== state.me) {
      const remove = document.createElement("button");
      remove.className = "link remove";
      remove.type = "button";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => removeMember(conversation.id, user));
      item.append(remove);
    }
    list.append(item);
  }
}

function remember(conversation) {
  state.conversations.set(conversation.id, conversation);
  state.order = [conversation.id, ...state.order.filter((id) => id !== conversation.id)];
}

// ---- actions ---------------------------------------------------------------

async function loadConversations() {
  const { conversations = [] } = await api("GET", "/api/conversations");
  state.conversations = new Map(conversations.map((c) => [c.id, c]));
  state.order = conversations.map((c) => c.id);
  renderConversations();
  await loadPresence().catch(() => {});
}

// Who of the people in my conversations is online now; changes then come
// as presence events.
async function loadPresence() {
  const everyone = new Set();
  for (const conversation of state.conversations.values()) {
    for (const id of conversation.participantIds || []) if (id !== state.me) everyone.add(id);
  }
  const ids = [...everyone];
  for (let start = 0; start < ids.length; start += 500) {
    const userIds = ids.slice(start, start + 500).join(",");
    const { presences = [] } = await api("GET", `/api/presence?userIds=${encodeURIComponent(userIds)}`);
    for (const presence of presences) {
      if (presence.online) state.online.add(presence.userId);
      else state.online.delete(presence.userId);
    }
  }
  renderConversations();
  renderMembers();
}

async function openConversation(id) {
  state.current = id;
  state.shown = new Set();
  state.messages = new Map();
  compose({});
  renderTyping();
  $("thread-title").textContent = othersIn(state.conversations.get(id));
  renderMembers();
  $("composer").hidden = false;
  $("thread-error").textContent = "";
  const list = $("messages");
  list.replaceChildren();
  renderConversations();
  try {
    const { messages = [] } = await api("GET", `/api/conversations/${encodeURIComponent(id)}/messages`);
    if (state.current !== id) return;
    if (!messages.length) {
      const empty = document.createElement("li");
      empty.className = "empty";
      empty.textContent = "Say hello 👋";
      list.append(empty);
    }
    messages.forEach(appendMessage);
    list.scrollTop = list.scrollHeight;
    await markRead(id, messages[messages.length - 1]);
  } catch (error) {
    $("thread-error").textContent = error.message;
  }
  $("content").focus();
}

async function markRead(conversationId, message) {
  if (!message) return;
  const conversation = await api("POST", `/api/conversations/${encodeURIComponent(conversationId)}/read`, {
    messageId: message.id,
  });
  state.conversations.set(conversation.id, conversation);
  renderConversations();
}

async function send(event) {
  event.preventDefault();
  const input = $("content");
  const content = input.value;
  if (!content.trim() || !state.current) return;
  $("send").disabled = true;
  const conversation = `/api/conversations/${encodeURIComponent(state.current)}/messages`;
  try {
    if (state.editing) {
      const edited = await api("PATCH", `${conversation}/${encodeURIComponent(state.editing.id)}`, { content });
      updateMessage(edited);
    } else {
      const body = state.replyTo ? { content, replyToId: state.replyTo.id } : { content };
      appendMessage(await api("POST", conversation, body));
    }
    input.value = "";
    compose({});
    $("thread-error").textContent = "";
  } catch (error) {
    $("thread-error").textContent = error.message;
  } finally {
    $("send").disabled = false;
    input.focus();
  }
}

async function addMembers(event) {
  event.preventDefault();
  const input = $("member-input");
  const userIds = input.value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const conversation = await api("POST", `/api/conversations/${encodeURIComponent(state.current)}/participants`, { userIds });
    input.value = "";
    state.conversations.set(conversation.id, conversation);
    renderMembers();
  } catch (error) {
    $("thread-error").textContent = error.message;
  }
}

async function removeMember(conversationId, userId) {
  try {
    await api("DELETE", `/api/conversations/${encodeURIComponent(conversationId)}/participants/${encodeURIComponent(userId)}`);
    if (userId === state.me) forget(conversationId);
  } catch (error) {
    $("thread-error").textContent = error.message;
  }
}

// The conversation is no longer mine (I left, or was removed).
function forget(conversationId) {
  state.conversations.delete(conversationId);
  state.order = state.order.filter((id) => id !== conversationId);
  state.reads.delete(conversationId);
  if (state.current === conversationId) {
    state.current = null;
    $("thread-title").textContent = "Pick a conversation";
    $("members-panel").hidden = true;
    $("composer").hidden = true;
    $("messages").replaceChildren();
  }
  renderConversations();
}

async function startConversation(event) {
  event.preventDefault();
  const input = $("new-participants");
  const participantIds = input.value.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    const conversation = await api("POST", "/api/conversations", { participantIds });
    input.value = "";
    $("sidebar-error").textContent = "";
    remember(conversation);
    await openConversation(conversation.id);
  } catch (error) {
    $("sidebar-error").textContent = error.message;
  }
}

// ---- live messages ---------------------------------------------------------

async function connect() {
  state.events?.close();
  const status = $("status");
  // EventSource cannot send headers, so the stream is opened with a
  // short-lived stream ticket in the URL rather than the long-lived token.
  let ticket;
  try {
    ({ ticket } = await api("POST", "/api/stream-tickets"));
  } catch (error) {
    // Banned: no reconnecting until the page is reloaded.
    if (error.status === 403) return stopped(error.message);
    status.dataset.state = "connecting";
    status.textContent = "reconnecting…";
    setTimeout(connect, 2000);
    return;
  }
  const params = new URLSearchParams({ token: ticket });
  if (state.lastEventId) params.set("lastEventId", state.lastEventId);
  // On its own reconnects the browser sends Last-Event-ID, and herald
  // replays what was missed before going live.
  const events = new EventSource(`/api/events?${params}`);
  state.events = events;
  events.onopen = () => {
    status.dataset.state = "live";
    status.textContent = "live";
  };
  events.onerror = () => {
    status.dataset.state = "connecting";
    status.textContent = "reconnecting…";
    // The browser gave up (for example, the ticket expired while the server
    // was away): start over with a new ticket, resuming after the last id.
    if (events.readyState === EventSource.CLOSED && state.events === events) setTimeout(connect, 1000);
  };
  events.onmessage = (event) => {
    state.lastEventId = event.lastEventId;
    receive(JSON.parse(event.data));
  };
  events.addEventListener("read", (event) => {
    state.lastEventId = event.lastEventId;
    receiveRead(JSON.parse(event.data));
  });
  events.addEventListener("presence", (event) => receivePresence(JSON.parse(event.data)));
  events.addEventListener("typing", (event) => receiveTyping(JSON.parse(event.data)));
  // A message changed: edited or deleted (the message as it now is), or a
  // reaction given or taken back.
  for (const name of ["edit", "delete"]) {
    events.addEventListener(name, (event) => {
      state.lastEventId = event.lastEventId;
      receiveChange(JSON.parse(event.data));
    });
  }
  events.addEventListener("reaction", (event) => {
    state.lastEventId = event.lastEventId;
    receiveReaction(JSON.parse(event.data));
  });
  events.addEventListener("membership", (event) => {
    state.lastEventId = event.lastEventId;
    receiveMembership(JSON.parse(event.data));
  });
  // The application ended this stream (a ban, a revocation, a
  // disconnection). Banned: stop and say why; revoked: sign out; otherwise
  // reconnect, resuming after the last id.
  events.addEventListener("disconnect", (event) => {
    const { reason } = JSON.parse(event.data);
    events.close();
    if (state.events !== events) return;
    state.events = null;
    if (reason.startsWith("banned")) return stopped(reason);
    if (reason === "token revoked") return signOut("Your session was revoked; sign in again.");
    status.dataset.state = "connecting";
    status.textContent = "reconnecting…";
    setTimeout(connect, 1000);
  });
  // The server could not replay what we missed: start over from the API.
  events.addEventListener("reset", () => {
    loadConversations().then(() => state.current && openConversation(state.current));
  });
}

async function receive(message) {
  // Their message is what they were typing.
  const typers = state.typing.get(message.conversationId);
  if (typers?.has(message.userId)) {
    clearTimeout(typers.get(message.userId));
    typers.delete(message.userId);
    renderTyping();
  }
  const known = state.conversations.get(message.conversationId);
  if (!known) {
    await loadConversations();
  } else {
    known.lastMessage = message;
    const open = message.conversationId === state.current && document.visibilityState === "visible";
    if (!open && message.userId !== state.me) known.unreadCount = String(Number(known.unreadCount || 0) + 1);
    remember(known);
    renderConversations();
  }
  if (message.conversationId === state.current) {
    appendMessage(message);
    if (message.userId !== state.me) markRead(message.conversationId, message).catch(() => {});
  }
}

// A message was edited or deleted: in the open conversation, and as the
// conversation's last message.
function receiveChange(message) {
  const known = state.conversations.get(message.conversationId);
  if (known?.lastMessage?.id === message.id) {
    known.lastMessage = message;
    renderConversations();
  }
  updateMessage(message);
}

// Someone reacted, or took it back: the counts of the open conversation.
function receiveReaction(change) {
  if (change.conversationId !== state.current) return;
  const message = state.messages.get(change.messageId);
  if (!message) return;
  const reactions = (message.reactions || []).map((reaction) => ({ ...reaction }));
  let reaction = reactions.find((r) => r.emoji === change.emoji);
  const added = Boolean(change.added);
  // My own change may already be shown: the answer to my PUT or DELETE
  // (the message as it now is) can arrive before its event.
  if (change.userId === state.me && Boolean(reaction?.mine) === added) return;
  if (!reaction && added) reactions.push((reaction = { emoji: change.emoji, count: 0, mine: false }));
  if (!reaction) return;
  reaction.count += added ? 1 : -1;
  if (change.userId === state.me) reaction.mine = added;
  updateMessage({ ...message, reactions: reactions.filter((r) => r.count > 0) });
}

// Someone read up to a message: "seen" marks for others' receipts, and
// unread counts for my own (read on another device, or this one).
function receiveRead(read) {
  const reads = state.reads.get(read.conversationId) || new Map();
  if (position(read.messageId) > position(reads.get(read.userId))) reads.set(read.userId, read.messageId);
  state.reads.set(read.conversationId, reads);
  if (read.conversationId === state.current) renderSeen();
  const known = state.conversations.get(read.conversationId);
  if (read.userId !== state.me || !known) return;
  if (known.lastMessage && position(read.messageId) >= position(known.lastMessage.id)) {
    known.unreadCount = "0";
    renderConversations();
  } else {
    loadConversations().catch(() => {});
  }
}

// Members joined or left: a conversation I joined appears, one I left
// goes, and the open one's members panel follows.
function receiveMembership(change) {
  if ((change.removedIds || []).includes(state.me)) return forget(change.conversationId);
  const known = state.conversations.get(change.conversationId);
  if (!known) return loadConversations().catch(() => {});
  known.participantIds = change.conversation.participantIds;
  renderConversations();
  if (change.conversationId === state.current) {
    $("thread-title").textContent = othersIn(known);
    renderMembers();
  }
}

function receivePresence(presence) {
  if (presence.online) state.online.add(presence.userId);
  else state.online.delete(presence.userId);
  renderConversations();
  renderMembers();
}

// "bob is typing…" under the open conversation, for a few seconds after
// each signal.
function receiveTyping(typing) {
  const typers = state.typing.get(typing.conversationId) || new Map();
  clearTimeout(typers.get(typing.userId));
  typers.set(typing.userId, setTimeout(() => {
    typers.delete(typing.userId);
    renderTyping();
  }, TYPING_SHOWN_MS));
  state.typing.set(typing.conversationId, typers);
  renderTyping();
}

function renderTyping() {
  const typers = [...(state.typing.get(state.current) || new Map()).keys()];
  $("typing").textContent = typers.length
    ? `${typers.join(", ")} ${typers.length === 1 ? "is" : "are"} typing…`
    : "";
}

// Tells the others this page is typing, at most as often as herald relays.
function typed() {
  if (!state.current || Date.now() - state.typedAt < TYPING_EVERY_MS) return;
  state.typedAt = Date.now();
  api("POST", `/api/conversations/${encodeURIComponent(state.current)}/typing`).catch(() => {});
}

// ---- start -----------------------------------------------------------------

// The stream ended for good (a ban): say why, and do not reconnect.
function stopped(reason) {
  const status = $("status");
  status.dataset.state = "banned";
  status.textContent = "disconnected";
  $("notice").textContent = `You were disconnected: ${reason}. Reload the page once the ban is lifted.`;
  $("notice").hidden = false;
}

function signOut(reason) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.events?.close();
  state.token = null;
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = reason || "";
}

async function signIn(token) {
  const me = subjectOf(token);
  if (!me) return signOut("That does not look like a token.");
  state.token = token;
  state.me = me;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = me;
  $("me-avatar").textContent = me.slice(0, 1);
  try {
    await loadConversations();
    connect();
  } catch (error) {
    $("sidebar-error").textContent = error.message;
  }
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("token-input").value.trim());
});
$("sign-out").addEventListener("click", () => signOut());
$("composer").addEventListener("submit", send);
$("composing-cancel").addEventListener("click", () => {
  if (state.editing) $("content").value = "";
  compose({});
});
$("new-conversation").addEventListener("submit", startConversation);
$("add-member").addEventListener("submit", addMembers);
$("leave").addEventListener("click", () => removeMember(state.current, state.me));
$("content").addEventListener("input", typed);
$("content").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) send(event);
});

const initial = tokenFromHash() || sessionStorage.getItem(TOKEN_KEY);
if (initial) signIn(initial);
else signOut();
