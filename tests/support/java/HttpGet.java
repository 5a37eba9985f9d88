// A Java app that knows nothing of the mesh, for the integration tests: GET one URL and print
// {"status": CODE, "body": BODY} (BODY is the server's JSON). Run as `java HttpGet.java URL`
// (JDK 11+ compiles a single-file program in memory). The JVM dials IPv4 addresses through
// dual-stack AF_INET6 sockets (::ffff:a.b.c.d) by default, which is what the tests exercise.
import java.io.InputStream;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;

public class HttpGet {
    public static void main(String[] args) throws Exception {
        HttpURLConnection c = (HttpURLConnection) new URL(args[0]).openConnection();
        c.setConnectTimeout(10000);
        c.setReadTimeout(10000);
        int status = c.getResponseCode();
        try (InputStream in = status < 400 ? c.getInputStream() : c.getErrorStream()) {
            String body = in == null ? "null" : new String(in.readAllBytes(), StandardCharsets.UTF_8);
            System.out.println("{\"status\": " + status + ", \"body\": " + body + "}");
        }
    }
}
