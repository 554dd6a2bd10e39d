import javax.xml.transform.Source;
import javax.xml.transform.URIResolver;

/**
 * The JDK's XSLTC transformer factory with one change: a source that a URI resolver returns
 * without a system id gets one, the URI that XSLTC's document() computes for it, so that XSLTC
 * finds the document it already parsed instead of parsing it again.
 *
 * <p>PixelMed's DicomSRValidator resolves DicomContextGroupsSource.xml (664 KB) from its jar
 * without a system id: XSLTC then parses it again at every context group lookup and keeps every
 * copy until the transformation ends (about 4 MB each, three lookups per NUM), so that the heap
 * a report needs grows with its content items (tests/integration/readers.py). Selected with
 * -Djavax.xml.transform.TransformerFactory=CachingDocumentsTransformerFactory; the validation
 * rules and PixelMed's output are unchanged.
 */
public class CachingDocumentsTransformerFactory
    extends com.sun.org.apache.xalan.internal.xsltc.trax.TransformerFactoryImpl {
  @Override
  public void setURIResolver(URIResolver resolver) {
    super.setURIResolver(resolver == null ? null : (href, base) -> {
      Source source = resolver.resolve(href, base);
      if (source != null && source.getSystemId() == null) {
        source.setSystemId(base == null || base.isEmpty() ? href
            : com.sun.org.apache.xml.internal.utils.SystemIDResolver.getAbsoluteURI(href, base));
      }
      return source;
    });
  }
}
