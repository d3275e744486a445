"""Stream a 16-bit mono WAV to `fdrl serve` at real-time pace; print each final label. Usage: ws_client.py talk.wav"""
import asyncio, json, sys, wave
from websockets.asyncio.client import connect

async def main(path: str, url: str = "ws://127.0.0.1:8765/ws") -> None:
    with wave.open(path) as wav:
        rate, pcm, step = wav.getframerate(), wav.readframes(wav.getnframes()), wav.getframerate() // 5 * 2
    async with connect(url) as ws:  # add additional_headers={"Authorization": "Bearer TOKEN"} off loopback
        await ws.send(json.dumps({"type": "start", "sample_rate": rate, "format": "pcm16"}))
        for i in range(0, len(pcm), step):  # 200 ms a message, as a microphone would deliver them
            await ws.send(pcm[i:i + step]); await asyncio.sleep(0.2)
        await ws.send(json.dumps({"type": "end"}))
        async for message in ws:  # every event, until the server closes after the final stats
            if (e := json.loads(message))["type"] == "utterance" and e["final"]: print(f"{e['start']:7.2f}s {e['label']:<10} {e['text']}")

asyncio.run(main(*sys.argv[1:]))
