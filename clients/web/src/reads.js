/**
 * Reads of something an event just announced. Events travel ahead of the store that answers
 * HTTP reads on some nodes (it catches up in moments): such a read may first be `not_found`,
 * and is tried again a few times, waiting longer each time.
 */
const TRIES = 9;

export async function readAnnounced(read) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await read();
    } catch (error) {
      if (error?.code !== "not_found" || attempt >= TRIES) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50 * 2 ** attempt));
    }
  }
}
