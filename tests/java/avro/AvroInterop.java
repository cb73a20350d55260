// Apache Avro (Java) side of the wire-contract interop test, driven by
// tests/integration/test_avro_java_interop.py.
//
// Usage: java AvroInterop encode|decode FILE.avsc...   (files in dependency order)
//
// Records travel as one JSON object per line with a flat field map, so this program needs no
// per-type code: nested fields are "outer.inner", the branch taken by a union of records is
// "field@type" (full record name), an array of records is "field#" (its length) plus
// "field.INDEX.inner" per item, every value is a string (or JSON null), timestamps are epoch
// milliseconds, enums their symbol.
//   encode: {"schema": NAME, "fields": {...}}  -> hex of Avro single-object encoding
//   decode: {"schema": NAME, "hex": HEX}      -> {"fields": {...}}
// fingerprints (no input): "FULLNAME HEX" per named type, HEX being the 8 bytes (little-endian)
// that single-object encoding puts after C3 01.
// Records are built as GenericData records and framed by BinaryMessageEncoder/Decoder.

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public final class AvroInterop {
  private static final ObjectMapper JSON = new ObjectMapper();

  public static void main(String[] args) throws Exception {
    Schema.Parser parser = new Schema.Parser();
    for (int i = 1; i < args.length; i++) {
      parser.parse(new File(args[i]));
    }
    Map<String, Schema> types = parser.getTypes();
    if (args[0].equals("fingerprints")) {
      for (Schema schema : types.values()) {
        byte[] fingerprint = SchemaNormalization.parsingFingerprint("CRC-64-AVRO", schema);
        System.out.println(schema.getFullName() + " " + HexFormat.of().formatHex(fingerprint));
      }
      return;
    }
    BufferedReader in =
        new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    String line;
    while ((line = in.readLine()) != null) {
      if (line.isBlank()) {
        continue;
      }
      JsonNode request = JSON.readTree(line);
      Schema schema = types.get(request.get("schema").asText());
      if (schema == null) {
        throw new IllegalArgumentException("unknown schema " + request.get("schema"));
      }
      if (args[0].equals("encode")) {
        GenericRecord record = build(schema, (ObjectNode) request.get("fields"), "");
        ByteBuffer encoded = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema)
            .encode(record);
        byte[] bytes = new byte[encoded.remaining()];
        encoded.get(bytes);
        System.out.println(HexFormat.of().formatHex(bytes));
      } else {
        byte[] bytes = HexFormat.of().parseHex(request.get("hex").asText());
        GenericRecord record = new BinaryMessageDecoder<GenericRecord>(GenericData.get(), schema)
            .decode(bytes);
        ObjectNode fields = JSON.createObjectNode();
        flatten(record, "", fields);
        ObjectNode reply = JSON.createObjectNode();
        reply.set("fields", fields);
        System.out.println(JSON.writeValueAsString(reply));
      }
    }
  }

  private static GenericRecord build(Schema schema, ObjectNode flat, String prefix) {
    GenericData.Record record = new GenericData.Record(schema);
    for (Schema.Field field : schema.getFields()) {
      String key = prefix + field.name();
      Schema type = field.schema();
      if (type.getType() == Schema.Type.UNION && flat.has(key + "@type")) {
        Schema branch = type.getTypes().get(type.getIndexNamed(flat.get(key + "@type").asText()));
        record.put(field.name(), build(branch, flat, key + "."));
      } else if (type.getType() == Schema.Type.RECORD) {
        record.put(field.name(), build(type, flat, key + "."));
      } else if (type.getType() == Schema.Type.ARRAY) {
        int count = Integer.parseInt(flat.get(key + "#").asText());
        GenericData.Array<GenericRecord> items = new GenericData.Array<>(count, type);
        for (int i = 0; i < count; i++) {
          items.add(build(type.getElementType(), flat, key + "." + i + "."));
        }
        record.put(field.name(), items);
      } else {
        JsonNode value = flat.get(key);
        record.put(field.name(), value == null || value.isNull() ? null : scalar(type, value.asText()));
      }
    }
    if (!GenericData.get().validate(schema, record)) {
      throw new IllegalArgumentException("record does not match " + schema.getFullName());
    }
    return record;
  }

  private static Object scalar(Schema type, String text) {
    if (type.getType() == Schema.Type.UNION) {
      for (Schema branch : type.getTypes()) {
        if (branch.getType() != Schema.Type.NULL) {
          return scalar(branch, text);
        }
      }
    }
    switch (type.getType()) {
      case STRING: return text;
      case LONG: return Long.parseLong(text);
      case INT: return Integer.parseInt(text);
      case BOOLEAN: return Boolean.parseBoolean(text);
      case DOUBLE: return Double.parseDouble(text);
      case ENUM: return new GenericData.EnumSymbol(type, text);
      default: throw new IllegalArgumentException("unsupported type " + type);
    }
  }

  private static void flatten(GenericRecord record, String prefix, ObjectNode out) {
    for (Schema.Field field : record.getSchema().getFields()) {
      String key = prefix + field.name();
      Object value = record.get(field.name());
      if (value instanceof GenericRecord nested) {
        if (field.schema().getType() == Schema.Type.UNION) {
          out.put(key + "@type", nested.getSchema().getFullName());
        }
        flatten(nested, key + ".", out);
      } else if (value instanceof List<?> items) {
        out.put(key + "#", String.valueOf(items.size()));
        for (int i = 0; i < items.size(); i++) {
          flatten((GenericRecord) items.get(i), key + "." + i + ".", out);
        }
      } else if (value == null) {
        out.putNull(key);
      } else {
        out.put(key, value.toString());
      }
    }
  }
}
