// Relays a job's WatchJob events to the browser as Server-Sent Events: `id:` is the event's
// sequence, so when the connection breaks the browser's EventSource reconnects with
// `Last-Event-ID` and the relay resumes after it (`afterSequence`): no event is lost or repeated.
// A browser that goes away (tab closed, navigation) aborts the request, which ends the WatchJob
// call; the job itself goes on.
import { currentSession, signInFirst } from "@/lib/session";
import { asUser, gateway } from "@/lib/gateway";
import { jobView } from "@/lib/jobs";
import { describeProblem } from "@/lib/problems";

export const dynamic = "force-dynamic";

function lastSequence(request: Request): bigint | undefined {
  const value = request.headers.get("last-event-id");
  return value !== null && /^\d{1,19}$/.test(value) ? BigInt(value) : undefined;
}

export async function GET(request: Request, { params }: { params: Promise<{ id: string }> }): Promise<Response> {
  const session = await currentSession();
  if (session === null) return signInFirst();
  const { id } = await params;
  const afterSequence = lastSequence(request);
  const stop = new AbortController();
  request.signal.addEventListener("abort", () => stop.abort(), { once: true });
  const encoder = new TextEncoder();

  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      const send = (text: string) => controller.enqueue(encoder.encode(text));
      // Reconnect quickly after a broken connection; the gateway keeps the job's events.
      send("retry: 1000\n\n");
      try {
        const events = gateway().followJob(id, { ...asUser(session, stop.signal), afterSequence });
        for await (const event of events) {
          if (event.job === undefined) continue;
          send(`id: ${event.sequence}\nevent: job\ndata: ${JSON.stringify(jobView(event.job))}\n\n`);
        }
        send("event: end\ndata: {}\n\n");
      } catch (error) {
        if (!stop.signal.aborted) send(`event: problem\ndata: ${JSON.stringify(describeProblem(error))}\n\n`);
      } finally {
        if (!stop.signal.aborted) controller.close();
      }
    },
    cancel() {
      stop.abort();
    },
  });
  return new Response(body, {
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      // no-transform: no compression (which would hold events back) anywhere on the way.
      "cache-control": "no-cache, no-transform",
      "x-accel-buffering": "no",
    },
  });
}
