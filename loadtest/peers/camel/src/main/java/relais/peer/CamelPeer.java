package relais.peer;

import com.sun.net.httpserver.HttpServer;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.concurrent.atomic.AtomicLong;
import java.util.zip.Deflater;
import java.util.zip.GZIPOutputStream;
import org.apache.camel.Exchange;
import org.apache.camel.builder.AggregationStrategies;
import org.apache.camel.builder.RouteBuilder;
import org.apache.camel.component.aws2.s3.AWS2S3Constants;
import org.apache.camel.component.kafka.KafkaConstants;
import org.apache.camel.main.Main;

/**
 * The peer pipeline of `make bench`, written the way a Camel user would write it.
 *
 * <p>{@code http}: Kafka → HTTP POST, each call inside a resilience4j circuit breaker, failures
 * redelivered with exponential backoff and random spread. {@code s3}: Kafka → batches per
 * partition → gzip → one S3 PUT per batch on RGW.
 *
 * <p>Progress is served as two numbers ("records bytes") on {@code GET /count}, so the bench
 * measures the peer the same way it measures Relais: from the first handled record to the last.
 */
public final class CamelPeer {
  private static final AtomicLong RECORDS = new AtomicLong();
  private static final AtomicLong BYTES = new AtomicLong();

  private CamelPeer() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 1 || !(args[0].equals("http") || args[0].equals("s3"))) {
      System.err.println("usage: CamelPeer http|s3   (settings from CAMEL_PEER_* environment variables)");
      System.exit(64);
    }
    serveCount(Integer.parseInt(env("CAMEL_PEER_COUNT_PORT", "19110")));
    Main main = new Main();
    main.configure().addRoutesBuilder(args[0].equals("http") ? new KafkaToHttp() : new KafkaToS3());
    try {
      main.run();
    } catch (Exception failure) {
      // The count server's thread would otherwise keep a failed peer alive.
      failure.printStackTrace();
      System.exit(1);
    }
    System.exit(0);
  }

  static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }

  static String kafkaUri(String topic, String valueDeserializer) {
    return "kafka:" + topic
        + "?brokers=" + env("CAMEL_PEER_BOOTSTRAP", "127.0.0.1:9092")
        + "&groupId=" + env("CAMEL_PEER_GROUP", "camel-peer")
        + "&autoOffsetReset=earliest"
        // One consumer thread per partition: Camel's way to process partitions in parallel.
        + "&consumersCount=" + env("CAMEL_PEER_CONSUMERS", "12")
        + "&maxPollRecords=500"
        + "&valueDeserializer=" + valueDeserializer;
  }

  /** Kafka → HTTP with a circuit breaker and redelivery, as Relais' worker does. */
  static final class KafkaToHttp extends RouteBuilder {
    @Override
    public void configure() {
      errorHandler(
          defaultErrorHandler()
              .maximumRedeliveries(5)
              .redeliveryDelay(100)
              .useExponentialBackOff()
              .backOffMultiplier(2)
              .maximumRedeliveryDelay(5000)
              .useCollisionAvoidance());
      String upstream = env("CAMEL_PEER_UPSTREAM", "http://127.0.0.1:18090/events");
      var route = from(kafkaUri(env("CAMEL_PEER_TOPIC", "relais.ingress"),
              "org.apache.kafka.common.serialization.StringDeserializer"))
          .routeId("kafka-to-http")
          .setHeader(Exchange.HTTP_METHOD, constant("POST"))
          .setHeader(Exchange.CONTENT_TYPE, constant("application/json"))
          .circuitBreaker()
          .resilience4jConfiguration()
          .slidingWindowSize(100)
          .minimumNumberOfCalls(20)
          .failureRateThreshold(50)
          .waitDurationInOpenState(10)
          .timeoutEnabled(true)
          .timeoutDuration(2000)
          .end()
          .to(upstream + "?connectionsPerRoute=64&maxTotalConnections=64")
          .end();
      // With CAMEL_PEER_OUTCOME_TOPICS (comma-separated), each delivered message also produces
      // one outcome record to each topic, as Relais' worker writes an audit record and a
      // realtime event: the same work per message, without Relais' transaction.
      String outcomes = env("CAMEL_PEER_OUTCOME_TOPICS", "");
      if (!outcomes.isEmpty()) {
        String brokers = env("CAMEL_PEER_BOOTSTRAP", "127.0.0.1:9092");
        for (String topic : outcomes.split(",")) {
          route = route.to("kafka:" + topic + "?brokers=" + brokers);
        }
      }
      route.process(exchange -> RECORDS.incrementAndGet());
    }
  }

  /** Kafka → batches per partition → gzip → S3 PUT, as Relais' audit-service does. */
  static final class KafkaToS3 extends RouteBuilder {
    @Override
    public void configure() {
      String s3 = "aws2-s3://" + env("CAMEL_PEER_BUCKET", "camel-peer")
          + "?overrideEndpoint=true&uriEndpointOverride=" + env("CAMEL_PEER_S3_ENDPOINT", "http://127.0.0.1:7480")
          + "&forcePathStyle=true&autoCreateBucket=true&region=" + env("CAMEL_PEER_S3_REGION", "default")
          + "&accessKey=RAW(" + env("CAMEL_PEER_S3_ACCESS_KEY", "relais-dev") + ")"
          + "&secretKey=RAW(" + env("CAMEL_PEER_S3_SECRET_KEY", "relais-dev-secret") + ")";
      int batch = Integer.parseInt(env("CAMEL_PEER_BATCH", "10000"));
      from(kafkaUri(env("CAMEL_PEER_TOPIC", "relais.audit"),
              "org.apache.kafka.common.serialization.ByteArrayDeserializer"))
          .routeId("kafka-to-s3")
          .aggregate(header(KafkaConstants.PARTITION), AggregationStrategies.groupedBody())
          .completionSize(batch)
          .completionTimeout(1000)
          .process(CamelPeer::gzipLines)
          .to(s3)
          .process(exchange -> {
            RECORDS.addAndGet(exchange.getProperty(Exchange.AGGREGATED_SIZE, Integer.class));
            BYTES.addAndGet(exchange.getIn().getBody(byte[].class).length);
          });
    }
  }

  /** The batch's values, one per line, gzip level 2 (Relais' default level). */
  static void gzipLines(Exchange exchange) throws IOException {
    @SuppressWarnings("unchecked")
    List<byte[]> values = exchange.getIn().getBody(List.class);
    ByteArrayOutputStream buffer = new ByteArrayOutputStream();
    try (GZIPOutputStream gzip = new GZIPOutputStream(buffer, 64 * 1024) {
          {
            def.setLevel(2);
          }
        }) {
      for (byte[] value : values) {
        gzip.write(value);
        gzip.write('\n');
      }
    }
    byte[] body = buffer.toByteArray();
    exchange.getIn().setBody(body);
    exchange.getIn().setHeader(AWS2S3Constants.CONTENT_LENGTH, (long) body.length);
    exchange.getIn().setHeader(AWS2S3Constants.KEY,
        "camel/" + exchange.getIn().getHeader(KafkaConstants.PARTITION) + "/" + exchange.getExchangeId() + ".gz");
  }

  static void serveCount(int port) throws IOException {
    HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 16);
    server.createContext("/count", http -> {
      byte[] body = (RECORDS.get() + " " + BYTES.get() + "\n").getBytes(StandardCharsets.UTF_8);
      http.sendResponseHeaders(200, body.length);
      http.getResponseBody().write(body);
      http.close();
    });
    server.start();
  }
}
