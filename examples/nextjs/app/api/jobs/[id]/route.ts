// Cancels one of the signed-in user's jobs (JobService.CancelJob). Its event stream then ends with
// the cancelled state.
import { currentSession, signInFirst } from "@/lib/session";
import { asUser, gateway } from "@/lib/gateway";
import { problemResponse } from "@/lib/problems";

export async function DELETE(request: Request, { params }: { params: Promise<{ id: string }> }): Promise<Response> {
  const session = await currentSession();
  if (session === null) return signInFirst();
  const { id } = await params;
  try {
    await gateway().jobs.cancelJob({ jobId: id }, asUser(session, request.signal));
    return new Response(null, { status: 204 });
  } catch (error) {
    return problemResponse(error);
  }
}
