// Submits a GenerateThumbnail job for the signed-in user (JobService.SubmitJob). The browser sends
// one idempotency key per click, so a retried request joins the job the first one queued instead
// of paying for a second.
import { currentSession, signInFirst } from "@/lib/session";
import { asUser, gateway } from "@/lib/gateway";
import { problemResponse } from "@/lib/problems";

interface GenerateBody {
  prompt?: unknown;
  variations?: unknown;
  idempotencyKey?: unknown;
}

export async function POST(request: Request): Promise<Response> {
  const session = await currentSession();
  if (session === null) return signInFirst();
  const body = (await request.json().catch(() => ({}))) as GenerateBody;
  const { prompt, variations, idempotencyKey } = body;
  if (
    typeof prompt !== "string" ||
    typeof variations !== "number" ||
    typeof idempotencyKey !== "string" ||
    !/^[A-Za-z0-9-]{8,64}$/.test(idempotencyKey)
  ) {
    return Response.json(
      {
        problem: {
          title: "Please check your input",
          message: "Send a prompt, a number of images and an idempotency key.",
        },
      },
      { status: 400 },
    );
  }
  try {
    const { job, existing } = await gateway().jobs.submitJob(
      { operation: { case: "generateThumbnail", value: { prompt, variations } }, idempotencyKey },
      asUser(session, request.signal),
    );
    return Response.json({ jobId: job?.id, existing }, { status: existing ? 200 : 201 });
  } catch (error) {
    return problemResponse(error);
  }
}
