// The page: microphone → AudioWorklet → WebSocket (/ws protocol, f32 at the AudioContext's rate);
// events back → live label, per-class bars, transcript coloured by label, latency.
"use strict";

const COLOURS = { neutral: "#777", happiness: "#d9a400", sadness: "#3a6fd8", anger: "#d33",
                  fear: "#8a4fc7", disgust: "#3b8e3b", surprise: "#e07b00", uncertain: "#aaa" };
const $ = (id) => document.getElementById(id);
let socket = null, context = null, stream = null, capture = null;

function setStatus(text) { $("status").textContent = text; }

function showScores(scores) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, value] of Object.entries(scores)) {
    const row = document.createElement("div");
    row.className = "bar";
    row.dataset.label = name;
    const label = document.createElement("span");
    label.textContent = name;
    const track = document.createElement("div");
    const fill = document.createElement("div");
    fill.className = "fill";
    fill.style.width = `${Math.round(100 * value)}%`;
    fill.style.background = COLOURS[name] || "#999";
    track.append(fill);
    const number = document.createElement("span");
    number.className = "value";
    number.textContent = value.toFixed(2);
    row.append(label, track, number);
    bars.append(row);
  }
}

function showUtterance(u) {
  $("label").textContent = u.label;
  $("label").style.color = COLOURS[u.label] || "#222";
  showScores(u.scores);
  if (!u.final) return;
  if (u.timings && u.timings.end_to_label !== undefined) {
    $("latency").textContent = `end of speech → label ${Math.round(1000 * u.timings.end_to_label)} ms`;
  }
  const line = document.createElement("p");
  line.dataset.label = u.label;
  const tag = document.createElement("span");
  tag.className = "tag";
  tag.style.background = COLOURS[u.label] || "#999";
  tag.textContent = u.label;
  const text = document.createElement("span");
  text.textContent = u.text || "(no words)";
  text.style.color = COLOURS[u.label] || "#222";
  line.append(tag, text);
  $("transcript").append(line);
}

function onEvent(event) {
  if (event.type === "utterance") showUtterance(event);
  else if (event.type === "level") $("meter").firstElementChild.style.width = `${Math.max(0, Math.min(100, 100 + 1.5 * event.rms_db))}%`;
  else if (event.type === "error") $("errors").textContent = event.message;
  else if (event.type === "stats") {
    $("stats").textContent = `${event.utterances} utterances, ${event.errors} errors, ${event.time.toFixed(1)} s heard`;
  }
}

async function start() {
  $("start").disabled = true;
  setStatus("asking for the microphone…");
  try {
    stream = await navigator.mediaDevices.getUserMedia(
      { audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 } });
    context = new AudioContext();
    await context.audioWorklet.addModule("worklet.js");
  } catch (e) {
    setStatus(`no microphone: ${e.message}`);
    $("start").disabled = false;
    return;
  }
  const token = new URLSearchParams(location.search).get("token");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  socket = new WebSocket(`${scheme}//${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`);
  socket.binaryType = "arraybuffer";
  const source = context.createMediaStreamSource(stream);
  capture = new AudioWorkletNode(context, "capture");
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "start", sample_rate: context.sampleRate, format: "f32", levels: true }));
    capture.port.onmessage = (message) => {
      if (socket.readyState === WebSocket.OPEN) socket.send(message.data);
    };
    source.connect(capture);
    setStatus(`listening (${context.sampleRate} Hz)`);
    $("stop").disabled = false;
  };
  socket.onmessage = (message) => onEvent(JSON.parse(message.data));
  socket.onclose = (close) => {
    setStatus(`closed (${close.code}${close.reason ? `: ${close.reason}` : ""})`);
    release();
  };
}

function stop() {
  $("stop").disabled = true;
  if (capture) {  // no audio may follow the end message
    capture.port.onmessage = null;
    capture.disconnect();
  }
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "end" }));
  setStatus("finishing…");
  if (stream) stream.getTracks().forEach((track) => track.stop());
}

function release() {
  if (stream) stream.getTracks().forEach((track) => track.stop());
  if (context) context.close();
  stream = context = capture = null;
  $("start").disabled = false;
  $("stop").disabled = true;
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
