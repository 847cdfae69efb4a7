// Computes the attention heatmap of an uploaded thumbnail (GatewayService.ComputeAttentionHeatmap).
// When the answer takes longer than the gateway's long-poll window, it answers with a pending
// job instead; the route then follows that job to its end.
import { finalJob, type AttentionHeatmap } from "@viewbait/gateway-client";
import { currentSession, signInFirst } from "@/lib/session";
import { asUser, gateway } from "@/lib/gateway";
import { dataUrl } from "@/lib/jobs";
import { problemResponse } from "@/lib/problems";
import type { HeatmapView } from "@/lib/shapes";

/** Larger uploads are refused here, before they cost a gateway call. */
const MAX_UPLOAD_BYTES = 8 * 1024 * 1024;

function view(heatmap: AttentionHeatmap): HeatmapView {
  return {
    heatmapSrc: dataUrl(heatmap.heatmap),
    regions: heatmap.regions.map((r) => ({
      label: r.label,
      weight: r.weight,
      x: r.box?.x ?? 0,
      y: r.box?.y ?? 0,
      width: r.box?.width ?? 0,
      height: r.box?.height ?? 0,
    })),
  };
}

export async function POST(request: Request): Promise<Response> {
  const session = await currentSession();
  if (session === null) return signInFirst();
  const file = (await request.formData().catch(() => null))?.get("thumbnail");
  if (!(file instanceof File) || file.size === 0) {
    return Response.json(
      { problem: { title: "Please choose an image", message: "Pick a thumbnail (PNG, JPEG or WebP) to analyse." } },
      { status: 400 },
    );
  }
  if (file.size > MAX_UPLOAD_BYTES) {
    return Response.json(
      { problem: { title: "That image is too large", message: "Please upload an image of at most 8 MB." } },
      { status: 413 },
    );
  }
  const clients = gateway();
  const options = asUser(session, request.signal);
  try {
    const data = new Uint8Array(await file.arrayBuffer());
    const answer = await clients.gateway.computeAttentionHeatmap({ image: { data, mimeType: file.type } }, options);
    if (answer.outcome.case === "result") return Response.json(view(answer.outcome.value));
    if (answer.outcome.case === "pending") {
      const job = await finalJob(clients.followJob(answer.outcome.value.jobId, { ...options, timeoutMs: 120_000 }));
      if (job.result.case === "computeAttentionHeatmap") return Response.json(view(job.result.value));
    }
    throw new Error(`unexpected heatmap answer: ${answer.outcome.case}`);
  } catch (error) {
    return problemResponse(error);
  }
}
